"""Per-token log-probabilities without a full B×T×V log_softmax copy. Pure torch.

log p(y_t) = logit[y_t] − logsumexp(logits_t). Computing logsumexp row-chunk by row-chunk
means the only V-sized temporary alive at once is one chunk, instead of a full float copy of
the logits (which for SmolLM2's 49,152-token vocabulary is the biggest tensor of a step).
Tests: tests/ops/test_logprobs.py.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK = 1024  # rows of logits reduced at once: 1024 × 49152 × 4 B ≈ 200 MB at most


def selective_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                       chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log softmax(logits)[..., labels] for logits (..., V) and integer labels (...).

    Returns a float tensor shaped like ``labels``. Differentiable. The logits are not shifted
    here: callers align logits at position t with the token at t + 1 (see ``shift_for_next_token``).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_labels = labels.reshape(-1)  # (N,)
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits reduce in fp32
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        rows = flat_logits[start:start + chunk_size].to(dtype)
        picked = rows.gather(-1, flat_labels[start:start + chunk_size, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(rows, dim=-1))
    if not out:
        return flat_logits.new_zeros(labels.shape, dtype=dtype)
    return torch.cat(out).reshape(labels.shape)


def shift_for_next_token(input_ids: torch.Tensor, loss_mask: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for next-token prediction: position t predicts token t + 1.

    input_ids, loss_mask: (B, T) → labels (B, T−1) = input_ids[:, 1:], mask (B, T−1) =
    loss_mask[:, 1:]. Pair with logits[:, :-1]. The off-by-one is pinned by
    tests/ops/test_logprobs.py::test_shift_pairs_logit_t_with_token_t_plus_1.
    """
    return input_ids[:, 1:], loss_mask[:, 1:].bool()


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Entropy H = logsumexp(l) − Σ softmax(l)·l per row, chunked like ``selective_logprobs``."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        rows = flat[start:start + chunk_size].to(torch.promote_types(flat.dtype, torch.float32))
        probs = torch.softmax(rows, dim=-1)
        out.append(torch.logsumexp(rows, dim=-1) - (probs * rows).sum(-1))
    if not out:
        return flat.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])


def gathered_logprobs(logits: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                      labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log softmax(logits[rows[m], columns[m]])[labels[m]] for m = 0 … M−1; logits (N, K, V).

    One position may be read for several labels (the last prompt token predicts the first token
    of every packed response). The logsumexp runs over the N·K positions chunk by chunk and the
    labels' logits are picked by index, so no (M, V) copy of the logits is made. (M,) float.
    """
    N, K, V = logits.shape
    flat = logits.reshape(N * K, V)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    lse = torch.cat([torch.logsumexp(flat[start:start + chunk_size].to(dtype), dim=-1)
                     for start in range(0, N * K, chunk_size)]) if N * K else flat.new_zeros(0)
    index = rows * K + columns
    return flat[index, labels].to(dtype) - lse[index]

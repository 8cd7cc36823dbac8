"""Forward passes every stage shares: response-token log-probs, critic values, RM scores.

Every pass goes through the model's own ``forward`` so DDP, FSDP and DeepSpeed wrappers see it.
- Log-probs: ``logits_to_keep`` limits the lm-head (hidden → 49,152 logits) to the positions
  that predict a response token in some row, so prompt positions never produce logits; the
  log-softmax is then reduced chunk by chunk (ops.selective_logprobs). Equal to the full-logits
  path to 1e-5 (tests/models/test_loading.py::test_response_logprobs_match_full_logits).
- Values: a forward hook on the score head captures its per-token output (B, T) before the
  model pools it.
- Encoders (BERT-style scorers, whose head reads the pooled [CLS] token and is not named
  ``score``): ``sequence_scores`` returns the model's own logits; they give no per-token values.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlhfkit.ops import entropy_from_logits, selective_logprobs


class ResponseLogprobs(NamedTuple):
    logprobs: torch.Tensor       # (B, T-1) log p(token t+1 | ≤ t), 0 where mask is False
    mask: torch.Tensor           # (B, T-1) True where token t+1 is a response token
    entropy: torch.Tensor | None  # (B, T-1) policy entropy at those positions, when asked


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counted over real tokens only (cumsum − 1; padding before them gets 0), so
    left padding does not shift them: HF's formula for ``generate``, used by every forward pass and
    by the decode loop's prompt (models/generate.py)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def unwrap(model):
    """The module under a DDP/accelerate wrapper (peft wrappers are kept)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, with_entropy: bool = False,
                      temperature: float = 1.0) -> ResponseLogprobs:
    """log π(y_t | x, y_<t) for every response token; logits only where some row needs them."""
    mask = response_mask[:, 1:].bool()  # position t predicts token t+1: the off-by-one
    keep = mask.any(0).nonzero().squeeze(-1)  # (K,) positions any row needs
    out = model(input_ids=input_ids, attention_mask=attention_mask.long(),
                position_ids=position_ids_from(attention_mask), logits_to_keep=keep,
                use_cache=False)
    logits = out.logits  # (B, K, V)
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, 1:][:, keep]  # (B, K)
    kept_mask = mask[:, keep]
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    picked = torch.where(kept_mask, selective_logprobs(logits, labels), 0.0)
    logprobs = zeros.to(picked.dtype).index_copy(1, keep, picked)
    entropy = None
    if with_entropy:
        kept_entropy = torch.where(kept_mask, entropy_from_logits(logits), 0.0)
        entropy = zeros.to(kept_entropy.dtype).index_copy(1, keep, kept_entropy)
    return ResponseLogprobs(logprobs, mask, entropy)


def score_head(model):
    """The per-token scalar head of a decoder scorer (``score``), or None for an encoder."""
    inner = unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return getattr(inner, "score", None)


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position (B, T): a critic's values V_t."""
    head = score_head(model)
    if head is None:
        raise ValueError(f"{type(unwrap(model)).__name__} scores whole sequences only (no "
                         "per-token 'score' head): a critic needs a decoder model")
    captured = []
    handle = head.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask.long(),
              position_ids=position_ids_from(attention_mask), use_cache=False)
    finally:
        handle.remove()
    return captured[-1].squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row (B,), for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reward-model score (B,): the head read at the last real token, found from the attention
    mask (not from pad ids: SmolLM2's pad token is its EOS). Same score for left and right
    padding (tests/models/test_loading.py::test_sequence_score_padding_invariant). Encoders: their own
    pooled logits (right padding only: BERT pools position 0)."""
    if score_head(model) is None:
        return model(input_ids=input_ids, attention_mask=attention_mask.long()
                     ).logits.squeeze(-1).float()
    values = token_scores(model, input_ids, attention_mask)
    return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)

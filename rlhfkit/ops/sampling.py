"""Next-token sampling for rollouts: temperature, top-k, top-p (nucleus), greedy. Pure torch.

The distribution is Hugging Face ``generate``'s with ``do_sample=True`` (warpers applied in its
order: temperature, then top-k, then top-p over what top-k kept), computed with less work:

- top-k: ``torch.topk`` keeps K candidates (sorted, descending); softmax and sampling run over
  (B, K) instead of masking a (B, V) copy. HF keeps every token tied with the K-th logit; topk
  keeps exactly K (ties between float logits have probability ~0).
- top-p without top-k: a first ``topk(NUCLEUS_CANDIDATES)`` usually holds the nucleus (the
  rows' top-K mass ≥ top_p means every later token is cut); a full sort only when it does not.
- the draw: one uniform per row through the inverse CDF of the unnormalised weights
  ``exp(l − max l)`` (``inverse_cdf_sample``), instead of ``softmax`` + ``torch.multinomial``,
  which draws B × V exponentials per token on CPU.
Tests: tests/ops/test_sampling.py (hand values; frequencies against the exact probabilities).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

NUCLEUS_CANDIDATES = 256  # first try for top-p alone: the nucleus of a trained LM is far smaller


class Candidates(NamedTuple):
    scores: torch.Tensor  # (B, K) temperature-scaled logits, descending; −inf = filtered out
    ids: torch.Tensor     # (B, K) token id of each candidate


def top_p_keep_mask(sorted_scores: torch.Tensor, top_p: float,
                    log_normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K) bool: the nucleus of scores sorted descending along the last dim.

    A token is kept when the probability mass strictly before it is < top_p, so the first token
    always stays (HF's TopPLogitsWarper removes a token when the ascending cumulative mass up to
    it is ≤ 1 − top_p: the same set). Probabilities are exp(score − log_normaliser), the
    normaliser defaulting to the logsumexp of ``sorted_scores`` themselves (K = V, or after top-k).
    """
    if log_normaliser is None:
        log_normaliser = torch.logsumexp(sorted_scores, dim=-1)
    probs = torch.exp(sorted_scores - log_normaliser.unsqueeze(-1))  # (B, K)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    return mass_before < top_p


def filter_candidates(scores: torch.Tensor, top_k: int, top_p: float) -> Candidates:
    """Top-k then top-p of temperature-scaled logits (B, V). top_k 0 and top_p 1 switch those
    filters off; with both off this is the whole vocabulary in id order (no sort)."""
    vocab = scores.shape[-1]
    if top_k <= 0 and top_p >= 1.0:
        ids = torch.arange(vocab, device=scores.device).expand_as(scores)
        return Candidates(scores, ids)
    k = min(top_k, vocab) if top_k > 0 else min(NUCLEUS_CANDIDATES, vocab)
    kept, ids = torch.topk(scores, k, dim=-1)  # (B, K) descending
    if top_p >= 1.0:
        return Candidates(kept, ids)
    if top_k > 0:
        keep = top_p_keep_mask(kept, top_p)  # probabilities renormalised over the top-k (HF order)
    else:
        log_norm = torch.logsumexp(scores, dim=-1)  # (B,) over the whole vocabulary
        if not bool((torch.logsumexp(kept, dim=-1) - log_norm >= math.log(top_p)).all()):
            kept, ids = torch.sort(scores, dim=-1, descending=True)  # nucleus wider than K
        keep = top_p_keep_mask(kept, top_p, log_norm)
    return Candidates(kept.masked_fill(~keep, float("-inf")), ids)


def inverse_cdf_sample(scores: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """(B,) column index drawn with probability softmax(scores) per row, given uniform (B,) in
    [0, 1). Column j is picked when u' = (1 − u)·W lies in (C_{j−1}, C_j], C the cumulative
    sum of w = exp(scores − max) and W = C_last: P(j) = w_j / W. u' > 0, so a column with weight
    0 (score −inf) is never picked. The sum runs in float64: no rounding bias over 49k tokens."""
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))  # (B, K)
    cdf = torch.cumsum(weights, dim=-1, dtype=torch.float64)
    target = (1.0 - uniform.double()).unsqueeze(-1) * cdf[:, -1:]  # (B, 1) in (0, W]
    picked = torch.searchsorted(cdf, target).squeeze(-1)
    return picked.clamp_(max=scores.shape[-1] - 1)  # u' = W can round one past the end


def sample_next_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                       uniform: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) next token ids from last-position logits (B, V). temperature 0 = greedy (argmax,
    first index on ties, as HF). ``uniform`` (B,) in [0, 1) defaults to ``torch.rand`` on the
    logits' device (torch's global generator there)."""
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    scores = logits.float() / temperature if temperature != 1.0 else logits.float()  # (B, V)
    candidates = filter_candidates(scores, top_k, top_p)
    if uniform is None:
        uniform = torch.rand(scores.shape[0], device=scores.device)
    picked = inverse_cdf_sample(candidates.scores, uniform)  # (B,)
    return candidates.ids.gather(-1, picked.unsqueeze(-1)).squeeze(-1)

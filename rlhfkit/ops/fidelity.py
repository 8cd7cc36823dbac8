"""Rollout fidelity: the sampler's log-probs against the trainer's on the same tokens. Pure torch.

The rollout is sampled by one computation (the decode loop: KV cache, last-position logits) and
scored by another (the trainer's forward over the whole sequence). On the same weights the two
should agree; where they do not (another dtype, another kernel, a quantised or stale sampler),
the importance ratio π/π_old of the update is computed against the wrong denominator.
Both sides are log-probs of the sampled token under softmax(logits / T) over the whole
vocabulary (models/generate.py, models/forward.py), so the gap is numerical, not the top-k /
top-p filter the token was drawn through.

- ``logprob_gap``: |Δ| = |log π_trainer − log π_sampler| per real token, its mean, its max and
  the share of tokens over a threshold (0.1 nats: a ratio off by more than ~10 %).
- ``truncated_importance_weights``: TIS (Yao et al. 2025, "Your efficient RL framework secretly
  brings you off-policy RL training"): w_t = min(π_trainer(y_t) / π_sampler(y_t), C), a
  constant weight on each token's policy-gradient term, so the gradient estimates the
  trainer's policy although the tokens came from the sampler's.
Shapes: B = rows, T = response tokens; ``response_mask`` (B, T) bool, True = real token.
Tests: tests/ops/test_fidelity.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlhfkit.ops.masked import masked_log_ratio, masked_mean, zero_outside_mask

FIDELITY_THRESHOLD = 0.1  # nats: |Δ| above it counts in ``share_over``


class LogprobGap(NamedTuple):
    abs_gap: torch.Tensor     # (B, T) |log π_trainer − log π_sampler| at real tokens, 0 elsewhere
    abs_mean: torch.Tensor    # () mean |Δ| over real tokens (0 with none)
    abs_max: torch.Tensor     # () max |Δ| over real tokens (0 with none)
    share_over: torch.Tensor  # () share of real tokens with |Δ| > threshold


def logprob_gap(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                response_mask: torch.Tensor, threshold: float = FIDELITY_THRESHOLD) -> LogprobGap:
    """|Δ| per token and its summaries over the real tokens of ``response_mask``. Padding may
    hold anything (NaN, 1e9): each side is zeroed there before the subtraction."""
    gap = masked_log_ratio(trainer_logprobs.float(), sampler_logprobs.float(),
                           response_mask).abs()  # (B, T), 0 at padding
    abs_max = gap.max() if gap.numel() else gap.new_zeros(())  # gap ≥ 0, 0 at padding
    over = masked_mean((gap > threshold).float(), response_mask)
    return LogprobGap(gap, masked_mean(gap, response_mask), abs_max, over)


def truncated_importance_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                                 response_mask: torch.Tensor, cap: float) -> torch.Tensor:
    """w_t = min(exp(log π_trainer − log π_sampler), cap) at real tokens, 0 elsewhere. (B, T),
    no gradient: a weight on the policy-gradient term, not a function of the trained weights.
    π_trainer is the trainer's log-prob of the token at the rollout's weights (the old
    log-probs of a trainer forward), π_sampler the sampler's. ``cap`` > 0 (C in the paper)."""
    if cap <= 0:
        raise ValueError(f"cap must be > 0 (TIS off is no weights at all); got {cap}")
    log_ratio = masked_log_ratio(trainer_logprobs.detach().float(), sampler_logprobs.float(),
                                 response_mask)
    return zero_outside_mask(torch.exp(log_ratio).clamp(max=cap), response_mask)

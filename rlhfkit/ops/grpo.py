"""GRPO math (Shao et al. 2024, DeepSeekMath §4.1): group-relative advantages and the clipped
loss with a k3 KL term to the reference. Pure torch.

A group is the G responses sampled for one prompt; they sit in consecutive rows
(rows g·G … g·G + G − 1). Shapes: B = rows (prompts × G), T = response tokens;
``response_mask`` (B, T) bool is a prefix of each row, as in ops/ppo.py. Tests: tests/ops/test_grpo_ops.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlhfkit.ops.masked import masked_log_ratio, masked_mean, zero_outside_mask
from rlhfkit.ops.ppo import clipped_surrogate, kl_k3
from rlhfkit.ops.tables import pick


def _group_std(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) the unbiased std of each row's group, repeated over the group."""
    return scores.view(-1, group_size).std(dim=1).repeat_interleave(group_size)


def _batch_std(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    return scores.std().expand_as(scores)


def _unit(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    return torch.ones_like(scores)


REWARD_SCALES = {"group": _group_std, "batch": _batch_std, "none": _unit}


def group_advantages(scores: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean of i's group) / (s_i + eps), one advantage per response. (B,).

    s_i: ``group`` = unbiased std of i's group (GRPO), ``batch`` = unbiased std of all B
    scores, ``none`` = 1 (Dr. GRPO: no difficulty bias). A group whose G scores are equal gets
    A = 0 for every member (no signal), never NaN. B must be a multiple of ``group_size`` (≥ 2).
    """
    if group_size < 2 or scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(f"scores must be (groups × group_size,) with group_size ≥ 2; got shape "
                         f"{tuple(scores.shape)} and group_size {group_size}")
    scores = scores.float()
    means = scores.view(-1, group_size).mean(dim=1).repeat_interleave(group_size)
    spread = pick(REWARD_SCALES, scale, "scale")(scores, group_size)
    return (scores - means) / (spread + eps)


def _per_token_weights(response_mask: torch.Tensor) -> torch.Tensor:
    """``token`` aggregation: every real token counts 1 (DAPO; TRL's default ``dapo``)."""
    return response_mask.float()


def _per_sequence_weights(response_mask: torch.Tensor) -> torch.Tensor:
    """``sequence`` aggregation: each response's tokens share weight 1 (the paper's 1/|o_i|)."""
    lengths = response_mask.sum(dim=1, keepdim=True).clamp(min=1).float()
    return response_mask.float() / lengths


AGGREGATIONS = {"token": _per_token_weights, "sequence": _per_sequence_weights}


class GRPOLossOutput(NamedTuple):
    loss: torch.Tensor      # () to minimise: clipped surrogate + beta · k3 KL
    kl: torch.Tensor        # () mean k3 KL(π ‖ π_ref) per real token (0 without a reference)
    clipfrac: torch.Tensor  # () share of real tokens where the clipped branch is active


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
              ref_logprobs: torch.Tensor | None, advantages: torch.Tensor,
              response_mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.0,
              aggregation: str = "token",
              loss_denominator: float | torch.Tensor | None = None) -> GRPOLossOutput:
    """Per token: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) + β·k3(π, π_ref), ρ = exp(logprobs − old);
    the first term is PPO's ``clipped_surrogate`` (one op for both losses).

    ``advantages`` are per response (B,) and broadcast over its tokens. Aggregation: ``token``
    sums over real tokens and divides by their count, ``sequence`` averages each response over
    its tokens and then over responses. ``loss_denominator`` replaces that count (token) or the
    number of responses (sequence) with one shared by all data-parallel shards. With
    old_logprobs = logprobs.detach() (one update per rollout) ρ = 1 and the gradient is
    −A·∇log π + β·∇k3. ``ref_logprobs`` None means no KL term (beta must then be 0).
    """
    if ref_logprobs is None and beta:
        raise ValueError("beta > 0 needs ref_logprobs")
    log_ratio = masked_log_ratio(logprobs, old_logprobs, response_mask)  # (B, T)
    surrogate = clipped_surrogate(log_ratio, advantages.to(log_ratio.dtype)[:, None], clip_eps)
    per_token = surrogate.per_token
    kl = (kl_k3(logprobs, ref_logprobs, response_mask) if ref_logprobs is not None
          else torch.zeros_like(per_token))
    if beta:  # never 0 × inf: k3 overflows where log π_ref − log π > ~88
        per_token = per_token + beta * kl
    per_token = zero_outside_mask(per_token, response_mask)
    weights = pick(AGGREGATIONS, aggregation, "aggregation")(response_mask)
    if loss_denominator is None:
        loss_denominator = weights.sum().clamp(min=1)
    loss = (per_token * weights).sum() / loss_denominator
    clipfrac = masked_mean(surrogate.clipped_mask.to(log_ratio.dtype), response_mask)
    return GRPOLossOutput(loss, masked_mean(kl.detach(), response_mask), clipfrac.detach())

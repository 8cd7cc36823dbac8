"""GRPO math (Shao et al. 2024, DeepSeekMath §4.1): group-relative advantages and the clipped
loss with a k3 KL term to the reference; the critic-free family around it as variants picked by
name: advantage estimators (``ADVANTAGES``: GRPO, Dr. GRPO, RLOO, REINFORCE++ and its baseline
variant, RAFT's best of each group), importance ratios (``RATIOS``: per token, or GSPO's per
sequence) and loss aggregations (``AGGREGATIONS``). Pure torch.

A group is the G responses sampled for one prompt; they sit in consecutive rows
(rows g·G … g·G + G − 1). Shapes: B = rows (prompts × G), T = response tokens;
``response_mask`` (B, T) bool is a prefix of each row, as in ops/ppo.py. Tests: tests/ops/test_grpo_ops.py.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from rlhfkit.ops.masked import (
    masked_log_ratio,
    masked_mean,
    masked_sum,
    masked_whiten,
    zero_outside_mask,
)
from rlhfkit.ops.ppo import clipped_surrogate, kl_k3, last_token_mask
from rlhfkit.ops.tables import pick


def _group_std(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) the unbiased std of each row's group, repeated over the group."""
    return scores.view(-1, group_size).std(dim=1).repeat_interleave(group_size)


def _batch_std(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    return scores.std().expand_as(scores)


def _unit(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    return torch.ones_like(scores)


REWARD_SCALES = {"group": _group_std, "batch": _batch_std, "none": _unit}


def _require_groups(scores: torch.Tensor, group_size: int) -> None:
    if group_size < 2 or scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(f"scores must be (groups × group_size,) with group_size ≥ 2; got shape "
                         f"{tuple(scores.shape)} and group_size {group_size}")


def group_advantages(scores: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean of i's group) / (s_i + eps), one advantage per response. (B,).

    s_i: ``group`` = unbiased std of i's group (GRPO), ``batch`` = unbiased std of all B
    scores, ``none`` = 1 (Dr. GRPO: no difficulty bias). A group whose G scores are equal gets
    A = 0 for every member (no signal), never NaN. B must be a multiple of ``group_size`` (≥ 2).
    """
    _require_groups(scores, group_size)
    scores = scores.float()
    means = scores.view(-1, group_size).mean(dim=1).repeat_interleave(group_size)
    spread = pick(REWARD_SCALES, scale, "scale")(scores, group_size)
    return (scores - means) / (spread + eps)


# --- advantage estimators (``grpo.advantage``) -------------------------------------------------
# One signature, so the stage picks one by name from ADVANTAGES (as DPO_LOSSES):
#   estimator(scores (B,), group_size, response_mask (B, T), kl_penalty (B, T), scale) →
#   (B,) one advantage per response, or (B, T) one per token (REINFORCE++).
# ``kl_penalty`` is −kl_coef·KL_t at each real token, the KL-to-reference folded into the rewards:
# REINFORCE++ per token; the per-response estimators (grpo, dr_grpo, rloo, raft) add its sum to the
# response's score first (``kl_folded_scores``). All zeros when grpo.kl_coef is 0, so they see
# the score alone. Statistics over "the batch" are over all B rows given: the stage hands in
# every process's rows.

def kl_folded_scores(scores: torch.Tensor, response_mask: torch.Tensor,
                     kl_penalty: torch.Tensor) -> torch.Tensor:
    """r_i − kl_coef·Σ_t KL_t: each response's score with its KL-to-reference penalty summed
    over its real tokens (``kl_penalty`` = −kl_coef·KL_t), the sequence-level KL-in-reward of
    RLOO (Ahmadian et al. 2024, §2: r(x, y) − β·log π(y|x)/π_ref(y|x)) and of TRL's RLOOTrainer.
    Unlike the loss's β·k3 term, whose gradient is that of the forward KL(π_ref‖π), this is the
    REINFORCE gradient of the reverse KL(π‖π_ref), the regulariser of the RLHF objective. (B,)"""
    return scores.float() + masked_sum(kl_penalty.float(), response_mask, dim=1)


def grpo_advantages(scores: torch.Tensor, group_size: int, response_mask: torch.Tensor,
                    kl_penalty: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """GRPO: ``group_advantages`` of the KL-folded scores with ``scale``
    (``grpo.scale_rewards``). (B,)."""
    return group_advantages(kl_folded_scores(scores, response_mask, kl_penalty), group_size, scale)


def dr_grpo_advantages(scores: torch.Tensor, group_size: int, response_mask: torch.Tensor,
                       kl_penalty: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training", §3.1): A_i = r_i − mean
    of its group, exactly: no division by the group's std (no question-difficulty bias). The
    other half of Dr. GRPO is the ``constant`` loss aggregation. Scores KL-folded. (B,)."""
    return group_advantages(kl_folded_scores(scores, response_mask, kl_penalty), group_size,
                            "none", eps=0.0)


def rloo_advantages(scores: torch.Tensor, group_size: int, response_mask: torch.Tensor,
                    kl_penalty: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 5): A_i = r_i − mean of the G − 1 *other* scores of its
    group = G/(G − 1)·(r_i − group mean); unscaled. G = 2: A_i = r_i − r_other. Scores
    KL-folded. (B,)."""
    _require_groups(scores, group_size)
    groups = kl_folded_scores(scores, response_mask, kl_penalty).view(-1, group_size)  # (B / G, G)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def returns_to_go(rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{s ≥ t} r_s over real tokens (γ = 1): GAE with V = 0, γ = λ = 1. (B, T), 0 at
    padding (test_returns_to_go_is_gae_with_no_critic_and_lambda_1)."""
    kept = zero_outside_mask(rewards, response_mask)
    returns = kept.flip(1).cumsum(1).flip(1)
    return zero_outside_mask(returns, response_mask)


def reinforce_pp_advantages(scores: torch.Tensor, group_size: int, response_mask: torch.Tensor,
                            kl_penalty: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """REINFORCE++ (Hu 2025, §3): token rewards r_t = −kl_coef·KL_t (``kl_penalty``) plus the
    score at the last real token; A_t = Σ_{s ≥ t} r_s, whitened over every real token of the
    batch (no critic, no group: the batch is the baseline). (B, T), 0 at padding."""
    score_at_end = zero_outside_mask(scores.to(kl_penalty.dtype)[:, None].expand_as(kl_penalty),
                                     last_token_mask(response_mask))
    returns = returns_to_go(kl_penalty + score_at_end, response_mask)
    return masked_whiten(returns, response_mask)


def reinforce_pp_baseline_advantages(scores: torch.Tensor, group_size: int,
                                     response_mask: torch.Tensor, kl_penalty: torch.Tensor,
                                     scale: str = "group") -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025, §3.2): each score minus its group's mean first, then
    REINFORCE++ (KL-folded token rewards, returns, whitened over the batch). (B, T)."""
    centred = group_advantages(scores, group_size, "none", eps=0.0)
    return reinforce_pp_advantages(centred, group_size, response_mask, kl_penalty)


def raft_advantages(scores: torch.Tensor, group_size: int, response_mask: torch.Tensor,
                    kl_penalty: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """RAFT, reward-ranked fine-tuning (Dong et al. 2023; online best-of-G, as ReST's inner
    step): A_i = 1 for the highest KL-folded score of its group, 0 for the others, so the
    update is supervised fine-tuning on each group's winner — nothing is pushed down. A group
    whose G scores are all equal has no winner (all 0); among tied best scores the first row
    wins. (B,)."""
    _require_groups(scores, group_size)
    groups = kl_folded_scores(scores, response_mask, kl_penalty).view(-1, group_size)
    winners = torch.zeros_like(groups).scatter_(1, groups.argmax(dim=1, keepdim=True), 1.0)
    spread = groups.max(dim=1, keepdim=True).values > groups.min(dim=1, keepdim=True).values
    return (winners * spread).reshape(-1)


def weight_positive(advantages: torch.Tensor, positive_weight: float) -> torch.Tensor:
    """W-REINFORCE's reweighting (Zhu et al. 2025, "The Surprising Effectiveness of Negative
    Reinforcement in LLM Reasoning", §4): every positive advantage × λ = ``positive_weight``,
    the negative ones kept. λ = 1: unchanged; λ = 0: negative samples only (NSR), which pushes
    the sampled bad responses down and spreads their mass over the rest of the distribution in
    proportion to it (no sharpening towards the sampled good ones). Any shape."""
    return torch.where(advantages > 0, advantages * positive_weight, advantages)


def reverse_kl_from_reference_samples(log_ratios: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref) per response from responses the reference sampled (GRPO's
    grpo.sample_from=reference), by self-normalised importance weights: with l_i = log π(y_i) −
    log π_ref(y_i), KL = E_ref[(π/π_ref)·l] ≈ Σ_i w_i·l_i, w = softmax(l). Consistent, but
    biased low for few samples: where the policy's mass lies in what the reference rarely
    samples, every l_i can be negative and so can the estimate (the held-out evaluation, on the
    policy's own samples, is the measure to trust). 0 when π = π_ref. ``log_ratios`` (N,) → ()."""
    log_ratios = log_ratios.float()
    return (torch.softmax(log_ratios, dim=0) * log_ratios).sum()


ADVANTAGES = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages,
              "reinforce++": reinforce_pp_advantages,
              "reinforce++_baseline": reinforce_pp_baseline_advantages, "raft": raft_advantages}
KL_IN_REWARD = ("reinforce++", "reinforce++_baseline")  # the KL only in the rewards: β = 0


# --- importance ratios (``grpo.ratio``) --------------------------------------------------------

def _token_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                     response_mask: torch.Tensor) -> torch.Tensor:
    """log ρ_t = log π − log π_old per token (PPO, GRPO). (B, T), 0 at padding."""
    return masked_log_ratio(logprobs, old_logprobs, response_mask)


def _sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                        response_mask: torch.Tensor) -> torch.Tensor:
    """GSPO (Zheng et al. 2025, eq. 7): log s_i = mean over the response's tokens of log ρ_t
    (s_i the geometric mean of the token ratios), the same at every real token of the row, so
    clipping keeps or drops a whole response. (B, T), 0 at padding."""
    token = masked_log_ratio(logprobs, old_logprobs, response_mask)
    per_row = masked_mean(token, response_mask, dim=1)  # (B,)
    return zero_outside_mask(per_row[:, None].expand_as(token), response_mask)


RATIOS = {"token": _token_log_ratio, "sequence": _sequence_log_ratio}


def _per_token_weights(response_mask: torch.Tensor) -> torch.Tensor:
    """``token`` aggregation: every real token counts 1 (DAPO; TRL's default ``dapo``)."""
    return response_mask.float()


def _per_sequence_weights(response_mask: torch.Tensor) -> torch.Tensor:
    """``sequence`` aggregation: each response's tokens share weight 1 (the paper's 1/|o_i|)."""
    lengths = response_mask.sum(dim=1, keepdim=True).clamp(min=1).float()
    return response_mask.float() / lengths


class Aggregation(NamedTuple):
    weights: Callable      # response_mask (B, T) → (B, T) weight of each token's loss
    denominator: Callable  # (weights, response_mask) → () the weighted sum's divisor


def _weight_sum(weights: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    return weights.sum().clamp(min=1)


def _every_position(weights: torch.Tensor, response_mask: torch.Tensor) -> float:
    """B × T: a constant, whatever the lengths (Dr. GRPO: the stage passes rows ×
    rollout.max_new_tokens, TRL's ``dr_grpo``)."""
    return float(response_mask.numel())


AGGREGATIONS = {"token": Aggregation(_per_token_weights, _weight_sum),
                "sequence": Aggregation(_per_sequence_weights, _weight_sum),
                "constant": Aggregation(_per_token_weights, _every_position)}


class GRPOLossOutput(NamedTuple):
    loss: torch.Tensor      # () to minimise: clipped surrogate + beta · k3 KL
    kl: torch.Tensor        # () mean k3 KL(π ‖ π_ref) per real token (0 without a reference)
    clipfrac: torch.Tensor  # () share of real tokens where the clipped branch is active


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
              ref_logprobs: torch.Tensor | None, advantages: torch.Tensor,
              response_mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.0,
              aggregation: str = "token",
              loss_denominator: float | torch.Tensor | None = None,
              ratio: str = "token", weights: torch.Tensor | None = None) -> GRPOLossOutput:
    """Per token: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) + β·k3(π, π_ref), ρ = exp(logprobs − old);
    the first term is PPO's ``clipped_surrogate`` (one op for both losses).

    ``advantages`` are per response (B,), broadcast over its tokens, or per token (B, T)
    (REINFORCE++). ``ratio``: ``token`` ρ_t, or ``sequence`` GSPO's s_i = exp(mean_t log ρ_t) at
    every token of response i (``RATIOS``). Aggregation (``AGGREGATIONS``): ``token`` sums over
    real tokens and divides by their count, ``sequence`` averages each response over its tokens
    and then over responses, ``constant`` sums over real tokens and divides by B × T (Dr. GRPO).
    ``loss_denominator`` replaces that count (token), number of responses (sequence) or B × T
    (constant) with one shared by all data-parallel shards. With old_logprobs =
    logprobs.detach() (one update per rollout) ρ = 1 and the gradient is −A·∇log π + β·∇k3,
    for either ratio. ``ref_logprobs`` None means no KL term (beta must then be 0).
    ``weights`` (B, T), no gradient, multiply the surrogate (not the KL term) of each token:
    truncated importance sampling (ops/fidelity.py::truncated_importance_weights); None = 1.
    """
    if ref_logprobs is None and beta:
        raise ValueError("beta > 0 needs ref_logprobs")
    log_ratio = pick(RATIOS, ratio, "ratio")(logprobs, old_logprobs, response_mask)  # (B, T)
    B = log_ratio.shape[0]
    advantages = zero_outside_mask(  # (B, T); NaN/inf in per-token padding never reaches ∇
        advantages.to(log_ratio.dtype).reshape(B, -1).expand_as(log_ratio), response_mask)
    surrogate = clipped_surrogate(log_ratio, advantages, clip_eps)
    per_token = surrogate.per_token
    if weights is not None:
        per_token = per_token * zero_outside_mask(weights, response_mask)
    kl = (kl_k3(logprobs, ref_logprobs, response_mask) if ref_logprobs is not None
          else torch.zeros_like(per_token))
    if beta:  # never 0 × inf: k3 overflows where log π_ref − log π > ~88
        per_token = per_token + beta * kl
    per_token = zero_outside_mask(per_token, response_mask)
    aggregate = pick(AGGREGATIONS, aggregation, "aggregation")
    weights = aggregate.weights(response_mask)
    if loss_denominator is None:
        loss_denominator = aggregate.denominator(weights, response_mask)
    loss = (per_token * weights).sum() / loss_denominator
    clipfrac = masked_mean(surrogate.clipped_mask.to(log_ratio.dtype), response_mask)
    return GRPOLossOutput(loss, masked_mean(kl.detach(), response_mask), clipfrac.detach())

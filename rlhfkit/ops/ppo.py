"""PPO math for RLHF: KL penalties, token rewards, GAE, clipped losses, debug metrics. Pure torch.

Shapes: response tokens only. B = batch, T = response length. ``response_mask`` (B, T) bool is
True at real response tokens and is a prefix of each row (tokens after EOS / padding are False).
Padding may hold garbage (1e9, NaN): every function selects with ``torch.where`` before any
arithmetic, so it never leaks into results or gradients
(tests/ops/test_ppo_ops.py::test_gae_padding_garbage_never_leaks,
::test_policy_loss_padding_garbage_gives_finite_grads).

Sections are numbered by the step of a PPO iteration they serve, as in rlhfkit/online/ppo.py
and the rows of docs/ppo.md: step 3 rewards (3.1 KL estimators, 3.2 token rewards, 3.3 missing-EOS
penalty), step 4 advantages (4.1 GAE), step 5 update (5.2 clipped losses), step 6 KL control
(6.1 adaptive controller); explained variance is a metric logged every iteration.
Whitening advantages is ``masked_whiten``; the entropy bonus is ``entropy_from_logits``.
Tests: tests/ops/test_ppo_ops.py (its sections carry the same numbers).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from rlhfkit.ops.masked import (
    masked_log_ratio,
    masked_mean,
    masked_sum,
    masked_var,
    zero_outside_mask,
)
from rlhfkit.ops.tables import pick


# --- step 3.1 · rewards: KL estimators (Schulman 2020, "Approximating KL divergence") ------------
# Samples come from π, log_ratio = log π − log π_ref, r = π_ref/π = exp(−log_ratio).
# All three estimate KL(π ‖ π_ref); masked positions are 0.

def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
          response_mask: torch.Tensor) -> torch.Tensor:
    """k1 = log_ratio = −log r: unbiased, high variance, can be negative per token. (B, T)."""
    return masked_log_ratio(logprobs, ref_logprobs, response_mask)


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
          response_mask: torch.Tensor) -> torch.Tensor:
    """k2 = ½·log_ratio²: biased, low variance, ≥ 0. (B, T)."""
    return 0.5 * masked_log_ratio(logprobs, ref_logprobs, response_mask) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
          response_mask: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r = exp(−log_ratio) − 1 + log_ratio: unbiased, ≥ 0. (B, T)."""
    log_ratio = masked_log_ratio(logprobs, ref_logprobs, response_mask)
    return zero_outside_mask(torch.expm1(-log_ratio) + log_ratio, response_mask)


KL_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# --- step 3.2 · rewards: token-level rewards -----------------------------------------------------

class RewardOutput(NamedTuple):
    rewards: torch.Tensor  # (B, T) non_score_reward + clipped score at the last real token
    kl: torch.Tensor  # (B, T) per-token KL estimate, 0 at padding
    non_score_reward: torch.Tensor  # (B, T) the KL-penalty part of ``rewards``


def last_token_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True only at the last real token of each row (mask is a prefix).

    Index = response_mask.sum(1) − 1; a row with no response token gets index −1, which no
    position matches, so it gets no True and nothing crashes.
    """
    last = response_mask.sum(1) - 1  # (B,)
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)  # (T,)
    return positions[None, :] == last[:, None]


def _per_token_kl_penalty(kl: torch.Tensor, response_mask: torch.Tensor,
                          kl_coef: float) -> torch.Tensor:
    """−kl_coef·KL_t at every real token (Ziegler et al. 2019, eq. 2, spread over tokens)."""
    return zero_outside_mask(-kl_coef * kl, response_mask)


def _sequence_kl_penalty(kl: torch.Tensor, response_mask: torch.Tensor,
                         kl_coef: float) -> torch.Tensor:
    """−kl_coef·mean_t KL_t once, at the last real token; 0 elsewhere."""
    mean_kl = masked_mean(kl, response_mask, dim=1)  # (B,)
    return zero_outside_mask((-kl_coef * mean_kl)[:, None].expand_as(kl),
                             last_token_mask(response_mask))


_KL_PENALTY_PLACEMENT = {False: _per_token_kl_penalty, True: _sequence_kl_penalty}


def clip_scores(scores: torch.Tensor, reward_clip: float) -> torch.Tensor:
    """scores (B,) clamped to ±reward_clip; reward_clip 0 = off (scores unchanged), like every
    "0 = off" setting (max_grad_norm, top_k, missing_eos_penalty). Negative values are rejected.
    """
    if reward_clip < 0:
        raise ValueError(f"reward_clip must be >= 0 (0 = off); got {reward_clip}")
    return scores if reward_clip == 0 else scores.clamp(-reward_clip, reward_clip)


def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    response_mask: torch.Tensor, kl_coef: float, kl_estimator: str = "k1",
                    sequence_kl: bool = False, reward_clip: float = 5.0) -> RewardOutput:
    """Per-token PPO rewards: KL penalty to the reference policy plus the reward-model score.

    scores (B,) are clamped to ±reward_clip (``clip_scores``; 0 = off) and added at the last
    real token of each row.
    sequence_kl=False: r_t = −kl_coef·KL_t at every real token.
    sequence_kl=True: no per-token penalty; −kl_coef·(mean KL over the response) is added
    once at the last real token. ``kl`` is the per-token estimate in both cases.
    Padding positions (and rows with no response token) have reward 0.
    """
    kl = pick(KL_ESTIMATORS, kl_estimator, "kl_estimator")(logprobs, ref_logprobs, response_mask)
    place = pick(_KL_PENALTY_PLACEMENT, bool(sequence_kl), "sequence_kl")
    non_score_reward = place(kl, response_mask, kl_coef)  # (B, T)
    clipped = clip_scores(scores, reward_clip).to(kl.dtype)  # (B,)
    score_reward = zero_outside_mask(clipped[:, None].expand_as(kl),
                                     last_token_mask(response_mask))
    return RewardOutput(non_score_reward + score_reward, kl, non_score_reward)


# --- step 3.3 · rewards: missing-EOS penalty (applied to the scores before 3.2) ------------------

def apply_missing_eos_penalty(scores: torch.Tensor, ended_with_eos: torch.Tensor,
                              penalty: float) -> torch.Tensor:
    """scores (B,) minus ``penalty`` (≥ 0) where the response did not end with EOS (truncated).

    ``penalty`` is a magnitude that is subtracted (penalty=1.0 lowers a truncated score by 1),
    so a sign slip cannot turn it into a bonus: negative values are rejected.
    """
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0 (it is subtracted from scores); got {penalty}")
    return torch.where(ended_with_eos, scores, scores - penalty)


# --- step 4.1 · advantages: GAE (Schulman et al. 2016, eq. 16) -----------------------------------

class GAEOutput(NamedTuple):
    advantages: torch.Tensor  # (B, T), 0 at padding
    returns: torch.Tensor  # (B, T) advantages + values, 0 at padding


def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
        gamma: float = 1.0, gae_lambda: float = 0.95) -> GAEOutput:
    """Backwards over T: δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}; returns = A + V.

    Rewards and values are zeroed at padding first, so V and A after the last real token are 0
    whatever the padding holds (test_gae_padding_garbage_never_leaks). Loop over T, vectorised
    over B.
    """
    rewards = zero_outside_mask(rewards, response_mask)
    values = zero_outside_mask(values, response_mask)
    T = rewards.shape[1]
    zero = torch.zeros_like(values[:, 0])  # (B,)
    next_value, next_adv = zero, zero
    advantages = [zero] * T
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = torch.where(response_mask[:, t], delta + gamma * gae_lambda * next_adv, zero)
        next_value = values[:, t]
        advantages[t] = next_adv
    adv = torch.stack(advantages, dim=1) if T else torch.zeros_like(values)  # (B, T)
    return GAEOutput(adv, zero_outside_mask(adv + values, response_mask))


# --- step 5.2 · update: clipped PPO losses (Schulman et al. 2017, eq. 7) -------------------------

def _token_mean(per_token: torch.Tensor, response_mask: torch.Tensor,
                loss_denominator: float | torch.Tensor | None) -> torch.Tensor:
    """masked_mean, or masked_sum / loss_denominator (a token count shared across data-parallel
    shards, so per-shard losses add up to the global one: test_loss_denominator_shards_sum)."""
    if loss_denominator is None:
        return masked_mean(per_token, response_mask)
    return masked_sum(per_token, response_mask) / loss_denominator


class ClippedSurrogate(NamedTuple):
    per_token: torch.Tensor     # (B, T) max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), to minimise
    clipped_mask: torch.Tensor  # (B, T) bool, True where the clipped branch is the larger


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float) -> ClippedSurrogate:
    """PPO-clip per token (Schulman et al. 2017, eq. 7, negated): ρ = exp(log_ratio),
    max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)). ``advantages`` broadcast against ``log_ratio`` (B, T):
    (B, T) per token (PPO) or (B, 1) per response (GRPO). No masking and no reduction: callers
    pass a masked log-ratio (``masked_log_ratio``) and aggregate their own way. A tie (ρ inside
    the clip range) is not "clipped". Shared by ``policy_loss`` and ops.grpo.grpo_loss.
    """
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    return ClippedSurrogate(torch.maximum(unclipped, clipped), clipped > unclipped)


class PolicyLossOutput(NamedTuple):
    loss: torch.Tensor  # () clipped surrogate, to minimise
    clipfrac: torch.Tensor  # () share of real tokens where the clipped branch is active
    approx_kl: torch.Tensor  # () k2 estimate of KL(π_old ‖ π_θ), samples from π_old


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, clip_eps: float = 0.2,
                loss_denominator: float | torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """PPO-clip: mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(logprobs − old_logprobs).

    At ρ = 1 the loss is −masked_mean(A). approx_kl = masked_mean(½·(logprobs − old_logprobs)²)
    (Schulman's k2). clipfrac and approx_kl are local masked means, also with loss_denominator.
    ``weights`` (B, T), no gradient, multiply each token's surrogate: truncated importance
    sampling (ops/fidelity.py::truncated_importance_weights); None = 1.
    """
    log_ratio = masked_log_ratio(logprobs, old_logprobs, response_mask)  # (B, T)
    advantages = zero_outside_mask(advantages, response_mask)
    surrogate = clipped_surrogate(log_ratio, advantages, clip_eps)
    per_token = surrogate.per_token
    if weights is not None:
        per_token = per_token * zero_outside_mask(weights, response_mask)
    loss = _token_mean(per_token, response_mask, loss_denominator)
    clipfrac = masked_mean(surrogate.clipped_mask.to(log_ratio.dtype), response_mask)
    approx_kl = masked_mean(kl_k2(logprobs, old_logprobs, response_mask).detach(), response_mask)
    return PolicyLossOutput(loss, clipfrac.detach(), approx_kl)


class ValueLossOutput(NamedTuple):
    loss: torch.Tensor  # () clipped squared error × ½, to minimise
    clipfrac: torch.Tensor  # () share of real tokens where the clipped error is the larger


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               response_mask: torch.Tensor, clip_eps_value: float = 0.2,
               loss_denominator: float | torch.Tensor | None = None) -> ValueLossOutput:
    """½·mean max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²)."""
    values = zero_outside_mask(values, response_mask)
    old_values = zero_outside_mask(old_values, response_mask)
    returns = zero_outside_mask(returns, response_mask)
    clipped_values = old_values + (values - old_values).clamp(-clip_eps_value, clip_eps_value)
    unclipped_sq = (values - returns) ** 2
    clipped_sq = (clipped_values - returns) ** 2
    loss = 0.5 * _token_mean(torch.maximum(unclipped_sq, clipped_sq), response_mask,
                             loss_denominator)
    clipfrac = masked_mean((clipped_sq > unclipped_sq).to(values.dtype), response_mask)
    return ValueLossOutput(loss, clipfrac.detach())


# --- metrics (logged every iteration): explained variance ----------------------------------------

def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       response_mask: torch.Tensor) -> torch.Tensor:
    """1 − Var[R − V] / Var[R] over real tokens: 1 = perfect, 0 = as good as predicting the mean.

    When Var[R] == 0 (constant returns, or < 2 tokens) the ratio is undefined; return 0
    ("explains nothing"), never NaN or −inf, so logged curves stay plottable.
    """
    values = zero_outside_mask(values, response_mask)
    returns = zero_outside_mask(returns, response_mask)
    var_returns = masked_var(returns, response_mask)
    var_residual = masked_var(returns - values, response_mask)
    defined = var_returns > 0
    safe = torch.where(defined, var_returns, torch.ones_like(var_returns))
    return torch.where(defined, 1.0 - var_residual / safe, torch.zeros_like(var_returns))


# --- step 6.1 · KL control: adaptive controller (Ziegler et al. 2019, section 2.2) ---------------

def adaptive_kl_update(kl_coef: float, current_kl: float, target_kl: float, horizon: int,
                       n_steps: int) -> float:
    """Next kl_coef: e = clip(KL/KL_target − 1, −0.2, 0.2); β ← β·(1 + e·n_steps/horizon).

    Plain floats, no state: the caller keeps kl_coef and passes it back in.
    """
    proportional_error = min(max(current_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + proportional_error * n_steps / horizon)

"""Hand-value tests for rlhfkit/ops/ppo.py. Expected numbers are derived in the comments.

Inputs use dyadic fractions (0.25, 0.5, ...) where possible so float32 results are exact.
"""
import math

import pytest
import torch

from rlhfkit.ops.masked import masked_mean
from rlhfkit.ops.ppo import (
    KL_ESTIMATORS,
    adaptive_kl_update,
    clipped_surrogate,
    apply_missing_eos_penalty,
    clip_scores,
    compute_rewards,
    explained_variance,
    gae,
    last_token_mask,
    policy_loss,
    value_loss,
)

NAN = float("nan")
T_, F_ = True, False


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype,
                                                       device=actual.device), atol=atol, rtol=0)


def on(device, *tensors) -> list[torch.Tensor]:
    """The module's example tensors on the test's device: the tests of ops that build tensors
    themselves (masks from arange, global token counts) run on each device."""
    return [t.to(device) for t in tensors]


# --- step 3.1 · KL estimators --------------------------------------------------------------------
# log_ratio = logprobs − ref_logprobs = [0.5, −0.5, (padding)]; the padding holds NaN.
KL_LOGPROBS = torch.tensor([[-0.5, -1.0, NAN]])
KL_REF = torch.tensor([[-1.0, -0.5, 0.0]])
KL_MASK = torch.tensor([[T_, T_, F_]])


def test_kl_k1_is_log_ratio():
    close(KL_ESTIMATORS["k1"](KL_LOGPROBS, KL_REF, KL_MASK), [[0.5, -0.5, 0.0]])


def test_kl_k2_is_half_squared_log_ratio():
    # ½·0.5² = 0.125 for both signs.
    close(KL_ESTIMATORS["k2"](KL_LOGPROBS, KL_REF, KL_MASK), [[0.125, 0.125, 0.0]])


def test_kl_k3_is_r_minus_1_minus_log_r():
    # k3 = exp(−lr) − 1 + lr: lr=0.5 → e^−0.5 − 0.5 = 0.6065306597 − 0.5 = 0.1065306597
    #                         lr=−0.5 → e^0.5 − 1.5 = 1.6487212707 − 1.5 = 0.1487212707
    close(KL_ESTIMATORS["k3"](KL_LOGPROBS, KL_REF, KL_MASK), [[0.1065306597, 0.1487212707, 0.0]])


def test_kl_estimators_are_zero_when_policy_equals_reference():
    lp = torch.tensor([[-0.3, -2.0, -0.7]])
    for name, estimator in KL_ESTIMATORS.items():
        close(estimator(lp, lp.clone(), torch.ones(1, 3, dtype=torch.bool)), [[0.0, 0.0, 0.0]])


# --- step 3.2 · token rewards --------------------------------------------------------------------
# Row 0: 3 real tokens, log_ratio [0.25, 0.5, 0.75]; row 1: 1 real token, log_ratio 0.75 then
# garbage; row 2: no response token at all (all garbage). kl_coef = 0.5.
REW_REF = torch.zeros(3, 3)
REW_LOGPROBS = torch.tensor([[0.25, 0.5, 0.75], [0.75, 1e9, NAN], [NAN, 1e9, -1e9]])
REW_MASK = torch.tensor([[T_, T_, T_], [T_, F_, F_], [F_, F_, F_]])
REW_SCORES = torch.tensor([1.0, 7.0, 3.0])  # 7 is clipped to 5; row 2 has nowhere to put 3


def test_last_token_mask_handles_short_and_empty_rows(device):
    assert last_token_mask(REW_MASK.to(device)).tolist() == \
        [[F_, F_, T_], [T_, F_, F_], [F_, F_, F_]]


def test_compute_rewards_per_token_kl_and_score_at_last_real_token(device):
    out = compute_rewards(*on(device, REW_SCORES, REW_LOGPROBS, REW_REF, REW_MASK), kl_coef=0.5)
    # −0.5·lr: row 0 [−0.125, −0.25, −0.375]; row 1 [−0.375]; padding 0.
    close(out.kl, [[0.25, 0.5, 0.75], [0.75, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(out.non_score_reward, [[-0.125, -0.25, -0.375], [-0.375, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # + score at the last real token: row 0 −0.375 + 1 = 0.625; row 1 −0.375 + clip(7)=5 → 4.625.
    close(out.rewards, [[-0.125, -0.25, 0.625], [4.625, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_compute_rewards_clips_scores_both_ways(device):
    mask = torch.ones(2, 1, dtype=torch.bool, device=device)
    lp = torch.zeros(2, 1, device=device)
    scores = torch.tensor([-9.0, 2.5], device=device)
    out = compute_rewards(scores, lp, lp, mask, kl_coef=0.1, reward_clip=2.0)
    close(out.rewards, [[-2.0], [2.0]])  # KL is 0, so rewards are the clamped scores


def test_compute_rewards_reward_clip_zero_is_off(device):
    mask = torch.ones(2, 1, dtype=torch.bool, device=device)
    lp = torch.zeros(2, 1, device=device)
    # reward_clip=0 means "no clipping" (as max_grad_norm=0, top_k=0): KL is 0, so the rewards
    # are the scores unchanged, not clamp(score, −0, 0) = 0.
    scores = torch.tensor([-9.0, 2.5], device=device)
    out = compute_rewards(scores, lp, lp, mask, kl_coef=0.1, reward_clip=0.0)
    close(out.rewards, [[-9.0], [2.5]])


def test_clip_scores_hand_values_and_zero_is_off(device):
    scores = torch.tensor([-9.0, -0.5, 0.25, 7.0], device=device)
    close(clip_scores(scores, 2.0), [-2.0, -0.5, 0.25, 2.0])  # clamp to [−2, 2]
    close(clip_scores(scores, 0.0), [-9.0, -0.5, 0.25, 7.0])  # 0 = off: unchanged


def test_compute_rewards_rejects_negative_reward_clip():
    mask = torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="reward_clip"):
        compute_rewards(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1), mask, kl_coef=0.1,
                        reward_clip=-1.0)


def test_compute_rewards_sequence_kl_subtracts_mean_kl_once_at_last_token(device):
    out = compute_rewards(*on(device, REW_SCORES, REW_LOGPROBS, REW_REF, REW_MASK), kl_coef=0.5,
                          sequence_kl=True)
    # Row 0: mean KL = (0.25 + 0.5 + 0.75)/3 = 0.5 → −0.5·0.5 = −0.25 at t=2; 1 − 0.25 = 0.75.
    # Row 1: mean KL = 0.75 → −0.375; 5 − 0.375 = 4.625. Row 2: nothing.
    close(out.kl, [[0.25, 0.5, 0.75], [0.75, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(out.non_score_reward, [[0.0, 0.0, -0.25], [-0.375, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(out.rewards, [[0.0, 0.0, 0.75], [4.625, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_compute_rewards_dispatches_kl_estimator(device):
    out = compute_rewards(*on(device, REW_SCORES, REW_LOGPROBS, REW_REF, REW_MASK), kl_coef=0.5,
                          kl_estimator="k2")
    # k2 = ½·lr²: row 0 [0.03125, 0.125, 0.28125]; × −0.5 → [−0.015625, −0.0625, −0.140625].
    close(out.kl, [[0.03125, 0.125, 0.28125], [0.28125, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(out.rewards, [[-0.015625, -0.0625, 1.0 - 0.140625], [5.0 - 0.140625, 0.0, 0.0],
                        [0.0, 0.0, 0.0]])


def test_compute_rewards_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="k1"):
        compute_rewards(REW_SCORES, REW_LOGPROBS, REW_REF, REW_MASK, kl_coef=0.5,
                        kl_estimator="k4")


# --- step 3.3 · missing-EOS penalty --------------------------------------------------------------

def test_missing_eos_penalty_subtracts_only_where_truncated(device):
    scores = torch.tensor([1.0, 2.0, -0.5], device=device)
    ended = torch.tensor([T_, F_, F_], device=device)
    close(apply_missing_eos_penalty(scores, ended, penalty=1.0), [1.0, 1.0, -1.5])


def test_missing_eos_penalty_rejects_negative():
    with pytest.raises(ValueError, match=">= 0"):
        apply_missing_eos_penalty(torch.zeros(1), torch.ones(1, dtype=torch.bool), penalty=-1.0)


# --- step 4.1 · GAE ------------------------------------------------------------------------------
# r = [0, 0, 1], V = [0.5, 0.25, 0.75], V after the last token = 0.
GAE_R = torch.tensor([[0.0, 0.0, 1.0]])
GAE_V = torch.tensor([[0.5, 0.25, 0.75]])
GAE_MASK = torch.ones(1, 3, dtype=torch.bool)


def test_gae_gamma_1_lambda_095():
    # δ2 = 1 + 0 − 0.75 = 0.25                     A2 = 0.25
    # δ1 = 0 + 0.75 − 0.25 = 0.5                    A1 = 0.5 + 0.95·0.25 = 0.7375
    # δ0 = 0 + 0.25 − 0.5 = −0.25                   A0 = −0.25 + 0.95·0.7375 = 0.450625
    # returns = A + V = [0.950625, 0.9875, 1.0]
    out = gae(GAE_R, GAE_V, GAE_MASK, gamma=1.0, gae_lambda=0.95)
    close(out.advantages, [[0.450625, 0.7375, 0.25]])
    close(out.returns, [[0.950625, 0.9875, 1.0]])


def test_gae_gamma_09_lambda_095():
    # γλ = 0.855
    # δ2 = 1 − 0.75 = 0.25                          A2 = 0.25
    # δ1 = 0.9·0.75 − 0.25 = 0.425                  A1 = 0.425 + 0.855·0.25 = 0.63875
    # δ0 = 0.9·0.25 − 0.5 = −0.275                  A0 = −0.275 + 0.855·0.63875 = 0.27113125
    # returns = [0.77113125, 0.88875, 1.0]
    out = gae(GAE_R, GAE_V, GAE_MASK, gamma=0.9, gae_lambda=0.95)
    close(out.advantages, [[0.27113125, 0.63875, 0.25]])
    close(out.returns, [[0.77113125, 0.88875, 1.0]])


def test_gae_lambda_0_is_one_step_td():
    # A_t = δ_t = [−0.25, 0.5, 0.25] (from the γ=1 derivation above); returns = r_t + V_{t+1}.
    out = gae(GAE_R, GAE_V, GAE_MASK, gamma=1.0, gae_lambda=0.0)
    close(out.advantages, [[-0.25, 0.5, 0.25]])
    close(out.returns, [[0.25, 0.75, 1.0]])


def test_gae_lambda_1_gamma_1_is_monte_carlo():
    # r = [0.5, −0.25, 1]: reward-to-go = [1.25, 0.75, 1.0]; A = G − V = [0.75, 0.5, 0.25].
    out = gae(torch.tensor([[0.5, -0.25, 1.0]]), GAE_V, GAE_MASK, gamma=1.0, gae_lambda=1.0)
    close(out.advantages, [[0.75, 0.5, 0.25]])
    close(out.returns, [[1.25, 0.75, 1.0]])


def test_gae_padding_garbage_never_leaks():
    # Row 0: 2 real tokens r = [0, 1], V = [0.5, 0.25], garbage after. Hand (γ=1, λ=0.95):
    # δ1 = 1 + 0 − 0.25 = 0.75 (V after the last real token is 0, not 1e9)   A1 = 0.75
    # δ0 = 0 + 0.25 − 0.5 = −0.25                                              A0 = −0.25 + 0.95·0.75 = 0.4625
    # Row 1: full length, same as test_gae_gamma_1_lambda_095 padded with a 4th masked column.
    rewards = torch.tensor([[0.0, 1.0, NAN, 1e9], [0.0, 0.0, 1.0, NAN]])
    values = torch.tensor([[0.5, 0.25, 1e9, NAN], [0.5, 0.25, 0.75, 1e9]])
    mask = torch.tensor([[T_, T_, F_, F_], [T_, T_, T_, F_]])
    out = gae(rewards, values, mask, gamma=1.0, gae_lambda=0.95)
    close(out.advantages, [[0.4625, 0.75, 0.0, 0.0], [0.450625, 0.7375, 0.25, 0.0]])
    close(out.returns, [[0.9625, 1.0, 0.0, 0.0], [0.950625, 0.9875, 1.0, 0.0]])
    # Same as computing the short row on its own, unpadded.
    alone = gae(rewards[:1, :2], values[:1, :2], mask[:1, :2], gamma=1.0, gae_lambda=0.95)
    close(out.advantages[:1, :2], alone.advantages)


# --- step 5.2 · policy loss (and the clipped surrogate it shares with GRPO) ----------------------

def test_policy_loss_at_ratio_1_is_minus_mean_advantage():
    logprobs = torch.tensor([[-0.7, -1.3, -0.2, NAN]])
    adv = torch.tensor([[1.0, -2.0, 0.5, 1e9]])
    mask = torch.tensor([[T_, T_, T_, F_]])
    out = policy_loss(logprobs, logprobs.clone(), adv, mask)
    close(out.loss, -(1.0 - 2.0 + 0.5) / 3)  # = 0.5/3
    close(out.clipfrac, 0.0)
    close(out.approx_kl, 0.0)


@pytest.mark.parametrize("ratio, adv, loss, clipfrac", [
    (1.5, 1.0, -1.2, 1.0),   # max(−1.5, −1.2) = −1.2: clipped branch active
    (0.5, 1.0, -0.5, 0.0),   # max(−0.5, −0.8) = −0.5: unclipped (pessimistic) branch
    (0.5, -1.0, 0.8, 1.0),   # max(0.5, 0.8) = 0.8: clipped
    (1.5, -1.0, 1.5, 0.0),   # max(1.5, 1.2) = 1.5: unclipped
    (1.1, 1.0, -1.1, 0.0),   # inside [0.8, 1.2]: both branches equal, not counted as clipped
])
def test_policy_loss_clipping_by_hand(ratio, adv, loss, clipfrac):
    out = policy_loss(torch.tensor([[math.log(ratio)]]), torch.zeros(1, 1),
                      torch.tensor([[adv]]), torch.ones(1, 1, dtype=torch.bool), clip_eps=0.2)
    close(out.loss, loss)
    close(out.clipfrac, clipfrac)
    close(out.approx_kl, 0.5 * math.log(ratio) ** 2)  # k2 on log ρ


def test_policy_loss_batch_of_cases_is_their_mean():
    # The four clipping cases above side by side: (−1.2 − 0.5 + 0.8 + 1.5)/4 = 0.15; clipfrac 2/4.
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.5)]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    out = policy_loss(logprobs, torch.zeros(1, 4), adv, torch.ones(1, 4, dtype=torch.bool))
    close(out.loss, 0.15)
    close(out.clipfrac, 0.5)


def test_clipped_surrogate_per_token_by_hand():
    # The five clipping cases of test_policy_loss_clipping_by_hand, per token, ε = 0.2:
    # ρ=1.5 A=1 → −1.2 (clipped); ρ=0.5 A=1 → −0.5; ρ=0.5 A=−1 → 0.8 (clipped);
    # ρ=1.5 A=−1 → 1.5; ρ=1.1 A=1 → −1.1 (inside the range: a tie, not clipped).
    log_ratio = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1]]))
    out = clipped_surrogate(log_ratio, torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]]), 0.2)
    close(out.per_token, [[-1.2, -0.5, 0.8, 1.5, -1.1]])
    assert out.clipped_mask.tolist() == [[T_, F_, T_, F_, F_]]


def test_clipped_surrogate_broadcasts_one_advantage_per_response():
    # advantages (B, 1), as GRPO passes them. Row 0, A = 2: ρ = 1.5 → max(−3, −2.4) = −2.4
    # (clipped), ρ = 1 → −2. Row 1, A = −0.5: ρ = 0.5 → max(0.25, 0.4) = 0.4 (clipped),
    # ρ = 2 → max(1.0, 0.6) = 1.0.
    log_ratio = torch.log(torch.tensor([[1.5, 1.0], [0.5, 2.0]]))
    out = clipped_surrogate(log_ratio, torch.tensor([[2.0], [-0.5]]), 0.2)
    close(out.per_token, [[-2.4, -2.0], [0.4, 1.0]])
    assert out.clipped_mask.tolist() == [[T_, F_], [T_, F_]]


def test_policy_loss_padding_garbage_gives_finite_grads():
    logprobs = torch.tensor([[-0.5, NAN, 1e9]], requires_grad=True)
    old = torch.tensor([[-0.5, 3.0, NAN]])
    adv = torch.tensor([[2.0, NAN, 1e9]])
    mask = torch.tensor([[T_, F_, F_]])
    out = policy_loss(logprobs, old, adv, mask)
    close(out.loss, -2.0)
    out.loss.backward()
    # d(−A·ρ)/d logprob = −A·ρ = −2 at the real token (ρ = 1, unclipped); 0 at padding.
    close(logprobs.grad, [[-2.0, 0.0, 0.0]])


def test_policy_loss_matches_naive_formula_on_random_batch():
    # The naive formula from the docstring, normalised with rlhfkit.ops.masked.masked_mean.
    new, old, adv, mask = _random_batch(seed=2)
    ratio = torch.exp(torch.where(mask, new - old, torch.zeros_like(new)))
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    close(policy_loss(new, old, adv, mask).loss, masked_mean(per_token, mask).item(), atol=1e-12)


# --- step 5.2 · value loss -----------------------------------------------------------------------

def test_value_loss_clipping_by_hand():
    # old_values = 0, ε_v = 0.2, so clip(V) ∈ [−0.2, 0.2].
    # V=0.5,  R=1:   (0.5−1)² = 0.25, (0.2−1)² = 0.64   → 0.64, clipped larger
    # V=0.5,  R=0:   0.25,            0.2² = 0.04       → 0.25
    # V=0.1,  R=1:   0.81,            0.81 (no clip)    → 0.81, tie is not "clipped"
    # V=−0.5, R=−1:  0.25,            (−0.2+1)² = 0.64  → 0.64, clipped larger
    # loss = ½·(0.64 + 0.25 + 0.81 + 0.64)/4 = ½·0.585 = 0.2925; clipfrac = 2/4.
    values = torch.tensor([[0.5, 0.5, 0.1, -0.5, NAN]])
    returns = torch.tensor([[1.0, 0.0, 1.0, -1.0, 1e9]])
    mask = torch.tensor([[T_, T_, T_, T_, F_]])
    out = value_loss(values, torch.zeros(1, 5), returns, mask, clip_eps_value=0.2)
    close(out.loss, 0.2925)
    close(out.clipfrac, 0.5)


def test_value_loss_without_clipping_is_half_mse():
    # V = old_values: clip is a no-op; ½·mean((V−R)²) = ½·(1 + 4)/2 = 1.25.
    values = torch.tensor([[1.0, -1.0]])
    out = value_loss(values, values.clone(), torch.tensor([[2.0, 1.0]]),
                     torch.ones(1, 2, dtype=torch.bool))
    close(out.loss, 1.25)
    close(out.clipfrac, 0.0)


# --- step 5.3 · loss_denominator (data-parallel normalisation) -----------------------------------

def _random_batch(seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 5
    lengths = torch.tensor([5, 2, 0, 3])
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T) prefix masks, one empty row
    def rand():
        return torch.randn(B, T, generator=g, dtype=torch.float64)
    # logprobs, old, adv/returns, mask
    return on(device, rand() * 0.3, rand() * 0.3, rand(), mask)


def test_loss_denominator_equal_to_token_count_is_masked_mean(device):
    new, old, other, mask = _random_batch(device=device)
    n_tokens = mask.sum()
    for fn in (policy_loss, value_loss):
        plain = fn(new, old, other, mask)
        counted = fn(new, old, other, mask, loss_denominator=n_tokens)
        close(counted.loss, plain.loss.item(), atol=1e-12)


def test_loss_denominator_shards_sum(device):
    # Two data-parallel shards, each divided by the GLOBAL token count, add up to the full batch.
    new, old, other, mask = _random_batch(seed=1, device=device)
    n_tokens = mask.sum()
    for fn in (policy_loss, value_loss):
        full = fn(new, old, other, mask).loss
        shard0 = fn(new[:2], old[:2], other[:2], mask[:2], loss_denominator=n_tokens).loss
        shard1 = fn(new[2:], old[2:], other[2:], mask[2:], loss_denominator=n_tokens).loss
        close(shard0 + shard1, full.item(), atol=1e-12)


# --- metrics · explained variance ----------------------------------------------------------------
EV_RETURNS = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1e9]])
EV_MASK = torch.tensor([[T_, T_, T_, T_, F_]])


def test_explained_variance_perfect_prediction_is_1():
    close(explained_variance(EV_RETURNS.clone(), EV_RETURNS, EV_MASK), 1.0)


def test_explained_variance_predicting_the_mean_is_0():
    values = torch.tensor([[2.5, 2.5, 2.5, 2.5, NAN]])  # R − V = R − mean(R): same variance
    close(explained_variance(values, EV_RETURNS, EV_MASK), 0.0)


def test_explained_variance_by_hand():
    # R − V = [0, 0, 0, −1]: mean −0.25, Σ dev² = 3·0.0625 + 0.5625 = 0.75, /3 = 0.25.
    # Var[R] = Σ (R − 2.5)² / 3 = 5/3. EV = 1 − 0.25·3/5 = 0.85.
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, NAN]])
    close(explained_variance(values, EV_RETURNS, EV_MASK), 0.85)


def test_explained_variance_constant_returns_is_0_not_nan():
    returns = torch.tensor([[2.0, 2.0, 2.0]])
    close(explained_variance(torch.tensor([[1.0, 2.0, 3.0]]), returns,
                             torch.ones(1, 3, dtype=torch.bool)), 0.0)


# --- step 6.1 · adaptive KL controller -----------------------------------------------------------

@pytest.mark.parametrize("current_kl, expected", [
    (6.6, 0.105),   # e = 6.6/6 − 1 = 0.1;      β·(1 + 0.1·50/100) = 0.1·1.05
    (5.4, 0.095),   # e = −0.1;                  0.1·0.95
    (6.0, 0.1),     # e = 0: unchanged
    (12.0, 0.11),   # e = 1 → clipped to 0.2;    0.1·(1 + 0.2·0.5) = 0.1·1.1
    (0.0, 0.09),    # e = −1 → clipped to −0.2;  0.1·0.9
])
def test_adaptive_kl_update_by_hand(current_kl, expected):
    new = adaptive_kl_update(0.1, current_kl, target_kl=6.0, horizon=100, n_steps=50)
    assert isinstance(new, float)
    assert new == pytest.approx(expected, rel=1e-12)

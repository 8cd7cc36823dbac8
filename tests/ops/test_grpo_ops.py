"""Hand-value tests for rlhfkit/ops/grpo.py. Expected numbers are derived in the comments."""
import math

import pytest
import torch

from rlhfkit.ops.grpo import (
    ADVANTAGES,
    dr_grpo_advantages,
    group_advantages,
    grpo_loss,
    kl_folded_scores,
    raft_advantages,
    weight_positive,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    returns_to_go,
    rloo_advantages,
)
from rlhfkit.ops.ppo import gae

NAN = float("nan")
T_, F_ = True, False


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype,
                                                       device=actual.device), atol=atol, rtol=0)


# --- group advantages ------------------------------------------------------------------------
# Two groups of G = 4: [1, 2, 3, 4] and [0, 0, 0, 0].
SCORES = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0])


def test_group_scale_uses_each_groups_unbiased_std_and_equal_groups_get_zero():
    # group 1: mean 2.5, deviations ±1.5, ±0.5; unbiased var = (2·2.25 + 2·0.25)/3 = 5/3.
    std = math.sqrt(5 / 3)
    expected = [d / (std + 1e-4) for d in (-1.5, -0.5, 0.5, 1.5)] + [0.0] * 4
    close(group_advantages(SCORES, 4, "group"), expected)


def test_batch_scale_uses_the_std_of_all_scores():
    # all 8: mean 1.25; squared deviations 0.0625 + 0.5625 + 3.0625 + 7.5625 + 4·1.5625 = 17.5,
    # unbiased var 17.5/7 = 2.5. Means are still per group.
    std = math.sqrt(2.5)
    expected = [d / (std + 1e-4) for d in (-1.5, -0.5, 0.5, 1.5)] + [0.0] * 4
    close(group_advantages(SCORES, 4, "batch"), expected)


def test_no_scale_only_centres_each_group():
    close(group_advantages(SCORES, 4, "none"), [-1.5 / 1.0001, -0.5 / 1.0001, 0.5 / 1.0001,
                                                 1.5 / 1.0001, 0, 0, 0, 0])


def test_groups_are_consecutive_rows():
    # G = 2 on the same scores: pairs (1, 2), (3, 4), (0, 0), (0, 0); each pair's unbiased
    # std is √0.5 for the first two, so A = ∓0.5/(√0.5 + 1e-4).
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    close(group_advantages(SCORES, 2, "group"), [-a, a, -a, a, 0, 0, 0, 0])


@pytest.mark.parametrize("scores,group_size", [(torch.zeros(6), 4), (torch.zeros(4), 1),
                                               (torch.zeros(2, 2), 2)])
def test_bad_group_shapes_are_refused(scores, group_size):
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(scores, group_size)


def test_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="allowed"):
        group_advantages(SCORES, 4, "median")


# --- the loss --------------------------------------------------------------------------------
# Two responses: row 0 has 2 real tokens, row 1 has 1; padding holds NaN. Each loss test runs on
# every device (tests/conftest.py::device), its tensors made there by ``on``.
MASK = torch.tensor([[T_, T_, F_], [T_, F_, F_]])
LOGPROBS = torch.tensor([[-1.0, -2.0, NAN], [-0.5, NAN, NAN]])


@pytest.fixture
def on(device):
    """(MASK, LOGPROBS, t): the example on the test's device, and ``t`` to build more there."""
    return (MASK.to(device), LOGPROBS.to(device),
            lambda values: torch.tensor(values, device=device))


def test_on_policy_loss_is_minus_the_advantage_per_token_or_per_sequence(on):
    # ρ = 1 everywhere; A = [1, −3]: token terms −1, −1 (row 0) and +3 (row 1).
    MASK, LOGPROBS, t = on
    adv = t([1.0, -3.0])
    token = grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK, aggregation="token")
    close(token.loss, (-1 - 1 + 3) / 3)  # over the 3 real tokens
    sequence = grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK, aggregation="sequence")
    close(sequence.loss, (-1 + 3) / 2)  # row means −1 and 3, then their mean
    close(token.kl, 0.0)
    close(token.clipfrac, 0.0)


def test_gradient_with_detached_old_logprobs_is_minus_advantage_over_the_token_count(on):
    MASK, LOGPROBS, t = on
    logprobs = LOGPROBS.clone().requires_grad_(True)
    adv = t([1.0, -3.0])
    grpo_loss(logprobs, logprobs.detach(), None, adv, MASK).loss.backward()
    close(logprobs.grad, [[-1 / 3, -1 / 3, 0.0], [1.0, 0.0, 0.0]])
    assert torch.isfinite(logprobs.grad).all()  # the NaN padding never leaks


def test_ratio_is_clipped_only_against_the_advantage(on):
    # row 0, token 0: ρ = 1.5, A = 1 → max(−1.5, −1.2) = −1.2 (clipped branch);
    # row 1, token 0: ρ = 1.5, A = −1 → max(1.5, 1.2) = 1.5 (unclipped). Others ρ = 1.
    MASK, LOGPROBS, t = on
    old = LOGPROBS.clone()
    old[0, 0] -= math.log(1.5)
    old[1, 0] -= math.log(1.5)
    out = grpo_loss(LOGPROBS, old, None, t([1.0, -1.0]), MASK, clip_eps=0.2)
    close(out.loss, (-1.2 - 1.0 + 1.5) / 3)
    close(out.clipfrac, 1 / 3)


def test_kl_term_is_k3_to_the_reference_times_beta(on):
    # log π − log π_ref = 0.5 on row 0 token 0, else 0: k3 = e^−0.5 − 1 + 0.5 = 0.1065307.
    MASK, LOGPROBS, t = on
    ref = LOGPROBS.clone()
    ref[0, 0] -= 0.5
    k3 = math.exp(-0.5) - 0.5
    out = grpo_loss(LOGPROBS, LOGPROBS, ref, t([0.0, 0.0]), MASK, beta=0.1)
    close(out.kl, k3 / 3)
    close(out.loss, 0.1 * k3 / 3)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(LOGPROBS, LOGPROBS, None, t([0.0, 0.0]), MASK, beta=0.1)


def test_shared_denominator_makes_shards_add_up_to_the_whole(on):
    MASK, LOGPROBS, t = on
    adv = t([1.0, -3.0])
    whole = grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK).loss
    parts = [grpo_loss(LOGPROBS[i:i + 1], LOGPROBS[i:i + 1], None, adv[i:i + 1], MASK[i:i + 1],
                       loss_denominator=3).loss for i in range(2)]
    close(parts[0] + parts[1], float(whole))


def test_beta_zero_never_turns_an_overflowing_kl_into_nan(on):
    # log π_ref − log π = 100: k3 = e^100 − … overflows float32 to inf; 0 · inf must not happen
    MASK, LOGPROBS, t = on
    logprobs = LOGPROBS.clone().requires_grad_(True)
    ref = LOGPROBS + 100.0
    out = grpo_loss(logprobs, logprobs.detach(), ref, t([1.0, -3.0]), MASK, beta=0.0)
    close(out.loss, (-1 - 1 + 3) / 3)
    out.loss.backward()
    assert torch.isfinite(logprobs.grad).all()


# --- advantage estimators (grpo.advantage) ------------------------------------------------------
NO_KL = torch.zeros(8, 1)
ONE_TOKEN = torch.ones(8, 1, dtype=torch.bool)


def test_grpo_estimator_is_group_advantages_with_the_chosen_scale():
    for scale in ("group", "batch", "none"):
        close(ADVANTAGES["grpo"](SCORES, 4, ONE_TOKEN, NO_KL, scale),
              group_advantages(SCORES, 4, scale))


def test_dr_grpo_centres_each_group_exactly_without_any_divisor():
    # group 1 mean 2.5 → [−1.5, −0.5, 0.5, 1.5]; no std, no eps (unlike scale "none"'s 1.0001)
    close(dr_grpo_advantages(SCORES, 4, ONE_TOKEN, NO_KL), [-1.5, -0.5, 0.5, 1.5, 0, 0, 0, 0])


def test_rloo_subtracts_the_mean_of_the_other_samples():
    # group 1 sum 10: r = 1 → 1 − 9/3 = −2; r = 2 → 2 − 8/3 = −2/3; r = 3 → 3 − 7/3 = 2/3;
    # r = 4 → 4 − 6/3 = 2. Equivalently G/(G − 1)·(r − mean) = 4/3·(r − 2.5).
    close(rloo_advantages(SCORES, 4, ONE_TOKEN, NO_KL), [-2, -2 / 3, 2 / 3, 2, 0, 0, 0, 0])
    close(rloo_advantages(SCORES, 4, ONE_TOKEN, NO_KL),
          4 / 3 * group_advantages(SCORES, 4, "none", eps=0.0))


def test_rloo_with_two_samples_is_each_score_minus_the_other():
    # G = 2, pairs (1, 2), (3, 4), (0, 0), (0, 0): A_i = r_i − r_other
    close(rloo_advantages(SCORES, 2, ONE_TOKEN, NO_KL), [-1, 1, -1, 1, 0, 0, 0, 0])


def test_per_response_estimators_fold_the_summed_kl_penalty_into_the_score():
    # One group of G = 2: scores [1, 3]; kl_penalty −kl_coef·KL_t = [[−0.1, −0.2], [−0.5, pad]]
    # (NaN padding never enters) → folded scores [1 − 0.3, 3 − 0.5] = [0.7, 2.5].
    scores = torch.tensor([1.0, 3.0])
    kl_penalty = torch.tensor([[-0.1, -0.2], [-0.5, NAN]])
    mask = torch.tensor([[T_, T_], [T_, F_]])
    close(kl_folded_scores(scores, mask, kl_penalty), [0.7, 2.5])
    close(rloo_advantages(scores, 2, mask, kl_penalty), [-1.8, 1.8])  # 0.7 − 2.5, 2.5 − 0.7
    close(dr_grpo_advantages(scores, 2, mask, kl_penalty), [-0.9, 0.9])  # mean 1.6
    std = 1.8 / math.sqrt(2)  # unbiased std of [0.7, 2.5]
    close(ADVANTAGES["grpo"](scores, 2, mask, kl_penalty, "group"),
          [-0.9 / (std + 1e-4), 0.9 / (std + 1e-4)], atol=1e-5)
    # a penalty that is the same for both responses changes nothing: only differences count
    same = torch.tensor([[-0.5, 0.0], [-0.5, NAN]])
    close(rloo_advantages(scores, 2, mask, same), rloo_advantages(scores, 2, mask, 0 * same))


def test_raft_takes_each_groups_best_and_only_it():
    # group 1 [1, 2, 3, 4]: the 4 wins; group 2 all 0: no winner; G = 2 pairs (1, 2), (3, 4)
    close(raft_advantages(SCORES, 4, ONE_TOKEN, NO_KL), [0, 0, 0, 1, 0, 0, 0, 0])
    close(raft_advantages(SCORES, 2, ONE_TOKEN, NO_KL), [0, 1, 0, 1, 0, 0, 0, 0])
    ties = torch.tensor([2.0, 5.0, 5.0, 1.0])  # tied best: the first of them
    close(raft_advantages(ties, 4, ONE_TOKEN[:4], NO_KL[:4]), [0, 1, 0, 0])
    # the KL penalty picks the winner: folded scores [1 − 0.3, 3 − 2.5] = [0.7, 0.5]
    scores, mask = torch.tensor([1.0, 3.0]), torch.tensor([[T_, T_], [T_, F_]])
    close(raft_advantages(scores, 2, mask, torch.tensor([[-0.1, -0.2], [-2.5, NAN]])), [1, 0])
    close(raft_advantages(scores, 2, mask, torch.zeros(2, 2)), [0, 1])


def test_weight_positive_scales_only_the_positive_advantages():
    advantages = torch.tensor([1.5, -0.5, 0.0, -1.0])
    close(weight_positive(advantages, 0.2), [0.3, -0.5, 0.0, -1.0])
    close(weight_positive(advantages, 1.0), advantages)  # λ = 1: unchanged
    close(weight_positive(advantages, 0.0), [0.0, -0.5, 0.0, -1.0])  # NSR: the bad ones only
    per_token = torch.tensor([[2.0, -1.0], [-3.0, 4.0]])  # REINFORCE++'s (B, T) alike
    close(weight_positive(per_token, 0.5), [[1.0, -1.0], [-3.0, 2.0]])


def test_returns_to_go_by_hand():
    # row 0: 1 + 2 + 3, 2 + 3, 3; row 1: 4 (NaN padding never enters the sums)
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN]])
    mask = torch.tensor([[T_, T_, T_], [T_, F_, F_]])
    close(returns_to_go(rewards, mask), [[6.0, 5.0, 3.0], [4.0, 0.0, 0.0]])


def test_returns_to_go_is_gae_with_no_critic_and_lambda_1():
    rewards = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(5)[None, :] < torch.tensor([5, 3, 1, 4])[:, None]
    close(returns_to_go(rewards, mask), gae(rewards, torch.zeros(4, 5), mask, 1.0, 1.0).advantages)


TWO_ROWS_MASK = torch.tensor([[T_, T_], [T_, F_]])


def test_reinforce_pp_folds_the_kl_into_token_rewards_and_whitens_over_the_batch():
    # kl_penalty −kl_coef·KL_t = [[−0.1, −0.2], [−0.3, pad]], scores [1, 0] added at the last
    # real token: rewards [[−0.1, 0.8], [−0.3]]; returns to go [[0.7, 0.8], [−0.3]].
    # Over the 3 real tokens: mean 0.4, deviations 0.3, 0.4, −0.7, Σ² = 0.74, unbiased var 0.37.
    # (G = 2 only fixes the shape checks' grouping; the batch is the baseline.)
    kl_penalty = torch.tensor([[-0.1, -0.2], [-0.3, NAN]])
    out = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), 2, TWO_ROWS_MASK, kl_penalty)
    std = math.sqrt(0.37 + 1e-8)
    close(out, [[0.3 / std, 0.4 / std], [-0.7 / std, 0.0]], atol=1e-5)


def test_reinforce_pp_baseline_subtracts_the_group_mean_first():
    # scores [3, 1] (one group) → centred [1, −1]; kl_penalty [[−0.5, 0], [0, 0]]:
    # rewards [[−0.5, 1], [0, −1]], returns [[0.5, 1], [−1, −1]]; mean −0.125, deviations
    # 0.625, 1.125, −0.875, −0.875, Σ² = 3.1875, unbiased var 1.0625.
    mask = torch.ones(2, 2, dtype=torch.bool)
    kl_penalty = torch.tensor([[-0.5, 0.0], [0.0, 0.0]])
    out = reinforce_pp_baseline_advantages(torch.tensor([3.0, 1.0]), 2, mask, kl_penalty)
    std = math.sqrt(1.0625 + 1e-8)
    close(out, [[0.625 / std, 1.125 / std], [-0.875 / std, -0.875 / std]], atol=1e-5)


def test_reinforce_pp_baselines_shift_invariance():
    # Whitening makes REINFORCE++ blind to a constant added to every score of the batch (each
    # return of a row holds its score once); the baseline variant is also blind to a constant
    # per group (removed by the group mean before the batch statistics).
    g = torch.Generator().manual_seed(1)
    scores, kl = torch.randn(8, generator=g), -0.1 * torch.rand(8, 3, generator=g)
    mask = torch.arange(3)[None, :] < torch.tensor([3, 2, 1, 3, 3, 1, 2, 2])[:, None]
    base = reinforce_pp_advantages(scores, 4, mask, kl)
    close(reinforce_pp_advantages(scores + 5.0, 4, mask, kl), base, atol=1e-5)
    per_group = torch.tensor([5.0] * 4 + [-2.0] * 4)
    close(reinforce_pp_baseline_advantages(scores + per_group, 4, mask, kl),
          reinforce_pp_baseline_advantages(scores, 4, mask, kl), atol=1e-5)
    assert not torch.allclose(reinforce_pp_advantages(scores + per_group, 4, mask, kl), base)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce++_baseline", "raft"])
def test_every_group_estimator_refuses_broken_groups(name):
    # (plain reinforce++ has no groups: its baseline is the whole batch)
    with pytest.raises(ValueError, match="group_size"):
        ADVANTAGES[name](torch.zeros(6), 4, torch.ones(6, 1, dtype=torch.bool), torch.zeros(6, 1))


# --- per-token advantages, GSPO's sequence ratio, the constant aggregation ------------------------

def test_per_token_advantages_weigh_each_token_and_padding_never_leaks(on):
    # ρ = 1; A per token [[1, 2, pad NaN], [−3, pad, pad]]: terms −1, −2, +3 over 3 tokens.
    MASK, LOGPROBS, t = on
    logprobs = LOGPROBS.clone().requires_grad_(True)
    adv = t([[1.0, 2.0, NAN], [-3.0, NAN, NAN]])
    out = grpo_loss(logprobs, logprobs.detach(), None, adv, MASK)
    close(out.loss, 0.0)
    out.loss.backward()
    close(logprobs.grad, [[-1 / 3, -2 / 3, 0.0], [1.0, 0.0, 0.0]])


def test_sequence_ratio_is_the_geometric_mean_and_clips_whole_responses(on):
    # row 0 token log-ratios [0.3, −0.1] → mean 0.1, s_0 = e^0.1 = 1.10517 inside [0.8, 1.2]:
    # −A·s_0 = −1.10517 at both tokens, nothing clipped. Row 1: s_1 = 1, A = −1 → +1.
    # The token ratio instead clips token 0 (e^0.3 = 1.34986 → −1.2) and keeps e^−0.1 = 0.904837.
    MASK, LOGPROBS, t = on
    old = LOGPROBS.clone()
    old[0, 0] -= 0.3
    old[0, 1] += 0.1
    adv = t([1.0, -1.0])
    sequence = grpo_loss(LOGPROBS, old, None, adv, MASK, ratio="sequence")
    close(sequence.loss, (2 * -math.exp(0.1) + 1) / 3)
    close(sequence.clipfrac, 0.0)
    token = grpo_loss(LOGPROBS, old, None, adv, MASK, ratio="token")
    close(token.loss, (-1.2 - math.exp(-0.1) + 1) / 3)
    close(token.clipfrac, 1 / 3)
    # per-sequence aggregation, GSPO's own: the mean of the two responses' terms
    close(grpo_loss(LOGPROBS, old, None, adv, MASK, aggregation="sequence",
                    ratio="sequence").loss, (-math.exp(0.1) + 1) / 2)


def test_sequence_ratio_clips_a_response_whose_mean_log_ratio_leaves_the_range(on):
    # row 0 log-ratios [0.5, 0.1] → mean 0.3, s_0 = 1.34986 > 1.2, A = 1 → −1.2 at both tokens
    MASK, LOGPROBS, t = on
    old = LOGPROBS.clone()
    old[0, 0] -= 0.5
    old[0, 1] -= 0.1
    out = grpo_loss(LOGPROBS, old, None, t([1.0, -1.0]), MASK, ratio="sequence")
    close(out.loss, (-1.2 - 1.2 + 1) / 3)
    close(out.clipfrac, 2 / 3)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_on_policy_sequence_ratio_has_the_token_ratios_gradient(aggregation, on):
    # ρ = 1: ∇s_i = mean_t ∇log π_t, and s_i sits at |y_i| tokens (or is averaged over them), so
    # GSPO's gradient equals GRPO's until the ratio moves away from 1.
    MASK, LOGPROBS, t = on
    adv = t([1.0, -3.0])
    grads = []
    for ratio in ("token", "sequence"):
        logprobs = LOGPROBS.clone().requires_grad_(True)
        grpo_loss(logprobs, logprobs.detach(), None, adv, MASK, aggregation=aggregation,
                  ratio=ratio).loss.backward()
        grads.append(logprobs.grad)
    close(grads[1], grads[0])


def test_constant_aggregation_divides_by_rows_times_width(on):
    # ρ = 1, A = [1, −3]: token terms −1, −1, +3, sum 1; B × T = 2 × 3 = 6 whatever the lengths
    MASK, LOGPROBS, t = on
    adv = t([1.0, -3.0])
    close(grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK, aggregation="constant").loss, 1 / 6)
    # the stage passes rows × rollout.max_new_tokens (2 × 4), shared by every process
    close(grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK, aggregation="constant",
                    loss_denominator=8).loss, 1 / 8)


def test_unknown_ratio_is_refused():
    with pytest.raises(ValueError, match="unknown ratio 'word'"):
        grpo_loss(LOGPROBS, LOGPROBS, None, torch.zeros(2), MASK, ratio="word")


def test_reverse_kl_from_reference_samples_by_hand():
    """π_ref = (1/2, 1/2), π = (0.8, 0.2), one reference sample of each outcome: the weights are
    π/π_ref normalised = π, so Σ w·l is KL(π ‖ π_ref) = 0.8·log 1.6 + 0.2·log 0.4 exactly."""
    from rlhfkit.ops.grpo import reverse_kl_from_reference_samples

    log_ratios = torch.tensor([math.log(1.6), math.log(0.4)])
    expected = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)  # 0.19274
    assert float(reverse_kl_from_reference_samples(log_ratios)) == pytest.approx(expected,
                                                                                  abs=1e-6)
    assert float(reverse_kl_from_reference_samples(torch.zeros(5))) == 0.0  # π = π_ref

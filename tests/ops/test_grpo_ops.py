"""Hand-value tests for rlhfkit/ops/grpo.py. Expected numbers are derived in the comments."""
import math

import pytest
import torch

from rlhfkit.ops.grpo import group_advantages, grpo_loss

NAN = float("nan")
T_, F_ = True, False


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype),
                               atol=atol, rtol=0)


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
# Two responses: row 0 has 2 real tokens, row 1 has 1; padding holds NaN.
MASK = torch.tensor([[T_, T_, F_], [T_, F_, F_]])
LOGPROBS = torch.tensor([[-1.0, -2.0, NAN], [-0.5, NAN, NAN]])


def test_on_policy_loss_is_minus_the_advantage_per_token_or_per_sequence():
    # ρ = 1 everywhere; A = [1, −3]: token terms −1, −1 (row 0) and +3 (row 1).
    adv = torch.tensor([1.0, -3.0])
    token = grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK, aggregation="token")
    close(token.loss, (-1 - 1 + 3) / 3)  # over the 3 real tokens
    sequence = grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK, aggregation="sequence")
    close(sequence.loss, (-1 + 3) / 2)  # row means −1 and 3, then their mean
    close(token.kl, 0.0)
    close(token.clipfrac, 0.0)


def test_gradient_with_detached_old_logprobs_is_minus_advantage_over_the_token_count():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -3.0])
    grpo_loss(logprobs, logprobs.detach(), None, adv, MASK).loss.backward()
    close(logprobs.grad, [[-1 / 3, -1 / 3, 0.0], [1.0, 0.0, 0.0]])
    assert torch.isfinite(logprobs.grad).all()  # the NaN padding never leaks


def test_ratio_is_clipped_only_against_the_advantage():
    # row 0, token 0: ρ = 1.5, A = 1 → max(−1.5, −1.2) = −1.2 (clipped branch);
    # row 1, token 0: ρ = 1.5, A = −1 → max(1.5, 1.2) = 1.5 (unclipped). Others ρ = 1.
    old = LOGPROBS.clone()
    old[0, 0] -= math.log(1.5)
    old[1, 0] -= math.log(1.5)
    out = grpo_loss(LOGPROBS, old, None, torch.tensor([1.0, -1.0]), MASK, clip_eps=0.2)
    close(out.loss, (-1.2 - 1.0 + 1.5) / 3)
    close(out.clipfrac, 1 / 3)


def test_kl_term_is_k3_to_the_reference_times_beta():
    # log π − log π_ref = 0.5 on row 0 token 0, else 0: k3 = e^−0.5 − 1 + 0.5 = 0.1065307.
    ref = LOGPROBS.clone()
    ref[0, 0] -= 0.5
    k3 = math.exp(-0.5) - 0.5
    out = grpo_loss(LOGPROBS, LOGPROBS, ref, torch.zeros(2), MASK, beta=0.1)
    close(out.kl, k3 / 3)
    close(out.loss, 0.1 * k3 / 3)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(LOGPROBS, LOGPROBS, None, torch.zeros(2), MASK, beta=0.1)


def test_shared_denominator_makes_shards_add_up_to_the_whole():
    adv = torch.tensor([1.0, -3.0])
    whole = grpo_loss(LOGPROBS, LOGPROBS, None, adv, MASK).loss
    parts = [grpo_loss(LOGPROBS[i:i + 1], LOGPROBS[i:i + 1], None, adv[i:i + 1], MASK[i:i + 1],
                       loss_denominator=3).loss for i in range(2)]
    close(parts[0] + parts[1], float(whole))


def test_beta_zero_never_turns_an_overflowing_kl_into_nan():
    # log π_ref − log π = 100: k3 = e^100 − … overflows float32 to inf; 0 · inf must not happen
    logprobs = LOGPROBS.clone().requires_grad_(True)
    ref = LOGPROBS + 100.0
    out = grpo_loss(logprobs, logprobs.detach(), ref, torch.tensor([1.0, -3.0]), MASK, beta=0.0)
    close(out.loss, (-1 - 1 + 3) / 3)
    out.loss.backward()
    assert torch.isfinite(logprobs.grad).all()

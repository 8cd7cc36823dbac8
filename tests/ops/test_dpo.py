"""Hand-derived checks of rlhfkit/ops/dpo.py.

Running example (float64), example 0 of ``example()``:
    π_w = −10, π_l = −12, ref_w = −11, ref_l = −11, |y_w| = 5, |y_l| = 4
    log-ratios: π_w − ref_w = 1, π_l − ref_l = −1 → z = 2
    per-token:  1/5 − (−1)/4 = 0.45 (ipo); policy only: −10/5 − (−12/4) = −2 + 3 = 1 (simpo)
Example 1 swaps chosen and rejected (z = −2, ipo −0.45, simpo −1).
sp(x) = log(1 + e^x) = −log σ(−x):
    sp(−1) = 0.31326168751822286, sp(1) = 1.3132616875182228,
    sp(−1.5) = 0.2014132779827524, sp(1.5) = 1.5 + sp(−1.5) = 1.7014132779827524
"""
import math

import pytest
import torch

from rlhfkit.ops.dpo import (
    DPO_LOSSES,
    PreferenceLogps,
    dpo_loss,
    dpo_metrics,
    hinge_loss,
    ipo_loss,
    simpo_loss,
)

SP_M1 = 0.31326168751822286
SP_P1 = 1.3132616875182228
SP_M15 = 0.2014132779827524
LOG2 = math.log(2)
TOL = dict(rtol=0, atol=1e-12)


def t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def example(dtype=torch.float64):
    return PreferenceLogps(
        policy_chosen=t([-10.0, -12.0], dtype), policy_rejected=t([-12.0, -10.0], dtype),
        ref_chosen=t([-11.0, -11.0], dtype), ref_rejected=t([-11.0, -11.0], dtype),
        chosen_len=torch.tensor([5, 4]), rejected_len=torch.tensor([4, 5]),
    )


def at_reference(values=(-3.0, -7.5, -20.0)):
    # policy == reference on both responses
    chosen, rejected = t(list(values)), t([v - 1.0 for v in values])
    n = torch.tensor([3, 4, 5])
    return PreferenceLogps(chosen, rejected, chosen.clone(), rejected.clone(), n, n + 1)


def test_sigmoid_hand_value():
    # β = ½: βz = ±1 → [−log σ(1), −log σ(−1)] = [sp(−1), sp(1)]
    torch.testing.assert_close(dpo_loss(example(), beta=0.5), t([SP_M1, SP_P1]), **TOL)


def test_sigmoid_label_smoothing_hand_value():
    # ε = 0.1, βz = 1: 0.9·sp(−1) + 0.1·sp(1) = 0.9·sp(−1) + 0.1·(1 + sp(−1)) = sp(−1) + 0.1
    # βz = −1: 0.9·sp(1) + 0.1·sp(−1) = sp(−1) + 0.9
    out = dpo_loss(example(), beta=0.5, label_smoothing=0.1)
    torch.testing.assert_close(out, t([SP_M1 + 0.1, SP_M1 + 0.9]), **TOL)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_sigmoid_is_log2_at_reference(beta, label_smoothing):
    # z = 0 → −(1 − ε)·log ½ − ε·log ½ = log 2
    out = dpo_loss(at_reference(), beta=beta, label_smoothing=label_smoothing)
    torch.testing.assert_close(out, t([LOG2] * 3), **TOL)


def test_ipo_hand_value():
    # β = ½ → target 1/(2β) = 1: (0.45 − 1)² = 0.3025, (−0.45 − 1)² = 2.1025
    torch.testing.assert_close(ipo_loss(example(), beta=0.5), t([0.3025, 2.1025]), **TOL)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_is_quarter_inverse_beta_squared_at_reference(beta):
    # z = 0 → (0 − 1/(2β))² = 1/(4β²)
    torch.testing.assert_close(ipo_loss(at_reference(), beta=beta), t([1 / (4 * beta ** 2)] * 3), **TOL)


def test_simpo_hand_value():
    # β = 2, γ = ½: 2·1 − ½ = 1.5 → sp(−1.5); 2·(−1) − ½ = −2.5 → sp(2.5) = 2.5 + sp(−2.5)
    sp_p25 = 2.5 + math.log1p(math.exp(-2.5))  # 2.5788191830988487
    torch.testing.assert_close(simpo_loss(example(), beta=2.0, gamma=0.5), t([SP_M15, sp_p25]), **TOL)


def test_simpo_ignores_reference():
    logps = example()
    without_ref = PreferenceLogps(logps.policy_chosen, logps.policy_rejected,
                                  chosen_len=logps.chosen_len, rejected_len=logps.rejected_len)
    torch.testing.assert_close(simpo_loss(without_ref, beta=2.0, gamma=0.5),
                               simpo_loss(logps, beta=2.0, gamma=0.5), **TOL)


def test_simpo_gamma_zero_at_equal_per_token_logps_is_log2():
    # −4/2 = −6/3 per token → margin 0 → log 2
    logps = PreferenceLogps(t([-4.0]), t([-6.0]), chosen_len=torch.tensor([2]),
                            rejected_len=torch.tensor([3]))
    torch.testing.assert_close(simpo_loss(logps, beta=2.0), t([LOG2]), **TOL)


def test_hinge_hand_value():
    # β = ¼: 1 − ¼·2 = ½; 1 − ¼·(−2) = 1.5.  β = 1: 1 − 2 < 0 → 0 (no push past z = 1/β)
    torch.testing.assert_close(hinge_loss(example(), beta=0.25), t([0.5, 1.5]), **TOL)
    torch.testing.assert_close(hinge_loss(example(), beta=1.0), t([0.0, 3.0]), **TOL)


def test_hinge_is_one_at_reference():
    torch.testing.assert_close(hinge_loss(at_reference(), beta=0.1), t([1.0] * 3), **TOL)


def test_dispatch_table_and_common_signature():
    assert set(DPO_LOSSES) == {"sigmoid", "ipo", "simpo", "hinge"}
    assert DPO_LOSSES["sigmoid"] is dpo_loss  # the config name of the paper's loss
    for name, fn in DPO_LOSSES.items():
        out = fn(example(), beta=0.5, label_smoothing=0.1, gamma=0.5)
        assert out.shape == (2,), name
    torch.testing.assert_close(DPO_LOSSES["sigmoid"](example(), beta=0.5, gamma=123.0),
                               t([SP_M1, SP_P1]), **TOL)  # gamma is ignored by sigmoid


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_gradient_raises_chosen_and_lowers_rejected(name):
    # At z = 0 (policy == reference) every loss is still active: sigmoid/simpo always, ipo
    # because 0 < 1/(2β), hinge because βz < 1. Descent must raise π_w and lower π_l.
    ref = at_reference()
    chosen = ref.policy_chosen.clone().requires_grad_()
    rejected = ref.policy_rejected.clone().requires_grad_()
    logps = ref._replace(policy_chosen=chosen, policy_rejected=rejected)
    DPO_LOSSES[name](logps, beta=0.5, gamma=0.5).sum().backward()
    assert (chosen.grad < 0).all(), chosen.grad
    assert (rejected.grad > 0).all(), rejected.grad


def test_sigmoid_gradient_hand_value():
    # ∂/∂π_w sp(−βz) = −β·σ(−βz); β = ½, z = 2 → −½·σ(−1) = −½/(1 + e)
    logps = example()
    chosen = logps.policy_chosen.clone().requires_grad_()
    dpo_loss(logps._replace(policy_chosen=chosen), beta=0.5)[0].backward()
    torch.testing.assert_close(chosen.grad, t([-0.5 / (1 + math.e), 0.0]), **TOL)


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_large_values_stay_finite(name):
    # |z| = 2e4 in float32: a naive log(1 + exp(·)) overflows, logsigmoid does not.
    chosen = torch.tensor([-1e4, -3e4, -2e4], requires_grad=True)
    rejected = torch.tensor([-3e4, -1e4, -2e4], requires_grad=True)
    zeros = torch.zeros(3)
    n = torch.tensor([1, 1, 0])  # an empty response divides by 1, not 0
    logps = PreferenceLogps(chosen, rejected, zeros, zeros, n, n)
    loss = DPO_LOSSES[name](logps, beta=1.0, label_smoothing=0.1, gamma=1.0)
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


def test_sigmoid_large_margin_values():
    # βz = 2e4 → sp(−2e4) = 0; βz = −2e4 → sp(2e4) = 2e4
    logps = PreferenceLogps(torch.tensor([0.0, -2e4]), torch.tensor([-2e4, 0.0]),
                            torch.zeros(2), torch.zeros(2))
    torch.testing.assert_close(dpo_loss(logps, beta=1.0), torch.tensor([0.0, 2e4]),
                               rtol=0, atol=1e-6)


def test_metrics_hand_values():
    # β = ½: chosen rewards ½·[1, −1], rejected ½·[−1, 1]; margins [1, −1]; accuracy [1, 0]
    m = dpo_metrics(example(), beta=0.5)
    torch.testing.assert_close(m.chosen_rewards, t([0.5, -0.5]), **TOL)
    torch.testing.assert_close(m.rejected_rewards, t([-0.5, 0.5]), **TOL)
    torch.testing.assert_close(m.reward_margin, t([1.0, -1.0]), **TOL)
    torch.testing.assert_close(m.reward_accuracy, t([1.0, 0.0]), **TOL)


def test_metrics_tie_is_not_accurate_and_detached():
    logps = at_reference()
    logps = logps._replace(policy_chosen=logps.policy_chosen.clone().requires_grad_())
    m = dpo_metrics(logps, beta=0.1)
    torch.testing.assert_close(m.reward_accuracy, t([0.0] * 3), **TOL)
    assert not m.chosen_rewards.requires_grad


def test_sigmoid_matches_pairwise_ranking_loss_on_implicit_rewards():
    # DPO is Bradley–Terry on the implicit rewards β·log(π/ref) (DPO eq. 5 → eq. 7).
    from rlhfkit.ops.ranking import pairwise_loss
    m = dpo_metrics(example(), beta=0.5)
    torch.testing.assert_close(dpo_loss(example(), beta=0.5).mean(),
                               pairwise_loss(m.chosen_rewards, m.rejected_rewards).loss, **TOL)


# --- KTO (Ethayarajh et al. 2024) ------------------------------------------------------------------

def test_kto_hand_values():
    # r = [1, −1, 0.5, 0], labels [good, bad, bad, good], z_ref 0.2, β 0.5, λ_D 1, λ_U 2:
    #   good r=1:    1·(1 − σ(0.5·(1 − 0.2)))    = 1 − σ(0.4)  = 0.401312
    #   bad  r=−1:   2·(1 − σ(0.5·(0.2 + 1)))    = 2(1 − σ(0.6)) = 0.708688
    #   bad  r=0.5:  2·(1 − σ(0.5·(0.2 − 0.5)))  = 2(1 − σ(−0.15)) = 1.074860
    #   good r=0:    1·(1 − σ(0.5·(0 − 0.2)))    = 1 − σ(−0.1) = 0.524979
    from rlhfkit.ops.dpo import kto_loss

    sig = lambda x: 1 / (1 + math.exp(-x))
    out = kto_loss(torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.tensor([True, False, False, True]),
                   torch.tensor(0.2), beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    expected = [1 - sig(0.4), 2 * (1 - sig(0.6)), 2 * (1 - sig(-0.15)), 1 - sig(-0.1)]
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, torch.tensor([0.401312, 0.708688, 1.074860, 0.524979]),
                               atol=1e-6, rtol=0)


def test_kto_at_policy_equals_reference_is_half_the_weight():
    from rlhfkit.ops.dpo import kto_loss

    out = kto_loss(torch.zeros(2), torch.tensor([True, False]), torch.tensor(0.0), beta=3.0,
                   desirable_weight=1.5, undesirable_weight=0.5)
    torch.testing.assert_close(out, torch.tensor([0.75, 0.25]), atol=1e-7, rtol=0)


def test_kto_gradient_raises_good_and_lowers_bad_log_ratios():
    from rlhfkit.ops.dpo import kto_loss

    r = torch.zeros(2, requires_grad=True)
    kto_loss(r, torch.tensor([True, False]), torch.tensor(0.0), beta=1.0).sum().backward()
    # d/dr [1 − σ(r)] = −σ'(0) = −0.25 (good); d/dr [1 − σ(−r)] = +0.25 (bad)
    torch.testing.assert_close(r.grad, torch.tensor([-0.25, 0.25]), atol=1e-7, rtol=0)


def test_kto_reference_point_is_a_clamped_detached_mean():
    from rlhfkit.ops.dpo import kto_reference_point

    kl = torch.tensor([1.0, 0.5], requires_grad=True)
    z = kto_reference_point(kl)
    torch.testing.assert_close(z, torch.tensor(0.75), atol=1e-7, rtol=0)
    assert not z.requires_grad  # z_ref is a baseline: no gradient through it
    # (0.3 − 0.1 − 0.8) / 3 = −0.2 → clamped to 0
    torch.testing.assert_close(kto_reference_point(torch.tensor([0.3, -0.1, -0.8])),
                               torch.tensor(0.0), atol=0, rtol=0)
    # the trainer's form: the sum over every process (1.0 + 0.5) with the global count 2
    torch.testing.assert_close(kto_reference_point(torch.tensor([1.5]), 2), z, atol=1e-7, rtol=0)

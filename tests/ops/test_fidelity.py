"""Rollout fidelity and truncated importance sampling (rlhfkit/ops/fidelity.py), by hand."""
import math

import pytest
import torch

from rlhfkit.ops.fidelity import logprob_gap, truncated_importance_weights
from rlhfkit.ops.grpo import grpo_loss
from rlhfkit.ops.ppo import policy_loss

NAN = float("nan")


def test_logprob_gap_hand_values():
    """Real tokens: row 0 |Δ| = |−1 + 1.05|, |−2 + 1.5|, |−0.5 + 0.5| = 0.05, 0.5, 0; row 1
    |−3 + 2|, |−0.2 + 0.25| = 1.0, 0.05. Mean 1.6 / 5 = 0.32, max 1.0, over 0.1: 0.5 and 1.0
    = 2 / 5. NaN and 1e9 at padding never reach a result."""
    trainer = torch.tensor([[-1.0, -2.0, -0.5, NAN], [-3.0, -0.2, 1e9, 1e9]])
    sampler = torch.tensor([[-1.05, -1.5, -0.5, 7.0], [-2.0, -0.25, NAN, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    gap = logprob_gap(trainer, sampler, mask)
    expected = torch.tensor([[0.05, 0.5, 0.0, 0.0], [1.0, 0.05, 0.0, 0.0]])
    torch.testing.assert_close(gap.abs_gap, expected, atol=1e-6, rtol=0)
    assert gap.abs_mean.item() == pytest.approx(0.32, abs=1e-6)
    assert gap.abs_max.item() == pytest.approx(1.0, abs=1e-6)
    assert gap.share_over.item() == pytest.approx(0.4, abs=1e-7)
    assert logprob_gap(trainer, sampler, mask, threshold=0.6).share_over.item() == \
        pytest.approx(0.2, abs=1e-7)  # only the 1.0


def test_logprob_gap_of_equal_logprobs_is_zero_and_no_tokens_give_zero_not_nan():
    lp = torch.tensor([[-0.3, -1.2]])
    gap = logprob_gap(lp, lp.clone(), torch.tensor([[True, True]]))
    assert gap.abs_mean.item() == gap.abs_max.item() == gap.share_over.item() == 0.0
    empty = logprob_gap(lp, lp + 5, torch.zeros(1, 2, dtype=torch.bool))
    assert empty.abs_mean.item() == empty.abs_max.item() == empty.share_over.item() == 0.0


def test_truncated_importance_weights_hand_values():
    """log π_trainer − log π_sampler = ln 2, −ln 2, ln 4 → ratios 2, 0.5, 4; min(·, 3) = 2, 0.5,
    3; padding (NaN on the sampler's side, 5 on the trainer's) → 0. No gradient flows."""
    sampler = torch.tensor([[-1.0, -1.0, -2.0, NAN]])
    trainer = torch.tensor([[-1.0 + math.log(2), -1.0 - math.log(2), -2.0 + math.log(4), 5.0]],
                           requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    weights = truncated_importance_weights(trainer, sampler, mask, cap=3.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 0.5, 3.0, 0.0]]), atol=1e-6, rtol=0)
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(trainer, sampler, mask, cap=0.0)


def test_tis_weights_scale_each_tokens_policy_gradient_term():
    """At ρ = 1 the PPO surrogate per token is −A: A = 1, −2, 3 and w = 2, 0.5, 3 give
    −2, 1, −9, mean −10/3, and ∂loss/∂log π_t = −w_t·A_t / 3. w = 1 is the unweighted loss.
    GRPO: the weights multiply the surrogate, not β·k3, so loss(w) − loss(1) = mean((w − 1)·(−A))
    whatever the KL term (below: −1.25)."""
    logprobs = torch.tensor([[-1.0, -0.5, -2.0]], requires_grad=True)
    old = logprobs.detach().clone()
    advantages = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    weights = torch.tensor([[2.0, 0.5, 3.0]])
    out = policy_loss(logprobs, old, advantages, mask, weights=weights)
    assert out.loss.item() == pytest.approx(-10 / 3, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-2.0, 1.0, -9.0]]) / 3,
                               atol=1e-6, rtol=0)
    unweighted = policy_loss(logprobs, old, advantages, mask).loss
    assert policy_loss(logprobs, old, advantages, mask, weights=torch.ones(1, 3)).loss.item() \
        == pytest.approx(unweighted.item(), abs=1e-7)
    # GRPO, per-response advantage 1.5, a reference 0.7 nats away at token 0 (k3 > 0):
    ref = old - torch.tensor([[0.7, 0.0, 0.0]])
    a = torch.tensor([1.5])
    with_w = grpo_loss(logprobs, old, ref, a, mask, beta=0.5, weights=weights).loss
    plain = grpo_loss(logprobs, old, ref, a, mask, beta=0.5).loss
    # (w − 1)·(−A) = (1, −0.5, 2)·(−1.5) = −1.5, 0.75, −3 → mean −1.25
    assert (with_w - plain).item() == pytest.approx(-1.25, abs=1e-6)

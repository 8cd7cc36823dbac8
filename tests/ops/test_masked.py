"""Hand values for masked reductions (rlhfkit/ops/masked.py)."""
import math

import torch

from rlhfkit.ops.masked import (
    masked_log_ratio,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    zero_outside_mask,
)

V = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("inf")]])
M = torch.tensor([[True, True, True], [True, False, False]])


def test_masked_sum_ignores_nan_and_inf_at_masked_positions():
    # 1 + 2 + 3 + 4 = 10; nan/inf are masked out
    assert masked_sum(V, M).item() == 10.0
    assert torch.equal(masked_sum(V, M, dim=1), torch.tensor([6.0, 4.0]))


def test_masked_mean_overall_and_per_row():
    assert masked_mean(V, M).item() == 2.5  # 10 / 4
    assert torch.equal(masked_mean(V, M, dim=1), torch.tensor([2.0, 4.0]))  # 6/3, 4/1


def test_masked_mean_of_empty_row_is_zero():
    out = masked_mean(torch.ones(2, 2), torch.tensor([[True, False], [False, False]]), dim=1)
    assert torch.equal(out, torch.tensor([1.0, 0.0]))


def test_masked_var_unbiased_and_biased():
    # values 1,2,3,4: mean 2.5, squared deviations 2.25+0.25+0.25+2.25 = 5
    assert math.isclose(masked_var(V, M).item(), 5 / 3, rel_tol=1e-6)
    assert math.isclose(masked_var(V, M, unbiased=False).item(), 5 / 4, rel_tol=1e-6)


def test_masked_whiten_hand_values():
    # (x − 2.5)/sqrt(5/3): x=1 → −1.5/1.290994 = −1.161895
    out = masked_whiten(V, M, eps=0.0)
    expected = torch.tensor([[-1.161895, -0.387298, 0.387298], [1.161895, 0.0, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_masked_whiten_keep_mean():
    out = masked_whiten(V, M, shift_mean=False, eps=0.0)
    # adds the mean 2.5 back at real positions only
    assert math.isclose(out[0, 0].item(), -1.161895 + 2.5, abs_tol=1e-6)
    assert out[1, 1].item() == 0.0


def test_zero_outside_mask_keeps_real_values_and_zeroes_the_rest():
    # row 0 kept whole; row 1 keeps 4, its nan and inf become 0
    out = zero_outside_mask(V, M)
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]))


def test_zero_outside_mask_blocks_nan_in_the_gradient():
    # values·mask would give 0·nan = nan in the forward and nan·0 in the backward; where() gives
    # d(sum)/dx = 1 at kept positions and exactly 0 at masked ones.
    x = V.clone().requires_grad_(True)
    zero_outside_mask(x, M).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))


def test_masked_log_ratio_by_hand():
    # [−0.5 − (−1), −1 − (−0.5), padding] = [0.5, −0.5, 0]; garbage on either side never leaks
    logprobs = torch.tensor([[-0.5, -1.0, float("nan")]])
    other = torch.tensor([[-1.0, -0.5, float("inf")]])
    mask = torch.tensor([[True, True, False]])
    assert torch.equal(masked_log_ratio(logprobs, other, mask), torch.tensor([[0.5, -0.5, 0.0]]))

"""Hand values for masked reductions (rlhfkit/ops/masked.py)."""
import math

import torch

from rlhfkit.ops import masked_mean, masked_sum, masked_var, masked_whiten

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

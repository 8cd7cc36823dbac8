import torch

from rlhfkit.ops.weights import interpolate


def test_interpolate_by_hand():
    start, end = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([4.0, 2.0, 1.0])
    torch.testing.assert_close(interpolate(start, end, 0.25), torch.tensor([1.0, 2.0, -0.5]))
    torch.testing.assert_close(interpolate(start, end, 1.0), end)
    torch.testing.assert_close(interpolate(start, end, 0.0), start)
    # from zeros (a LoRA B matrix's initialisation) it is η·end
    torch.testing.assert_close(interpolate(torch.zeros(3), end, 0.5), torch.tensor([2.0, 1.0, 0.5]))

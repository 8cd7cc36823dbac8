import torch

from rlhfkit.ops.weights import interpolate, mean_of_products


def test_interpolate_by_hand():
    start, end = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([4.0, 2.0, 1.0])
    torch.testing.assert_close(interpolate(start, end, 0.25), torch.tensor([1.0, 2.0, -0.5]))
    torch.testing.assert_close(interpolate(start, end, 1.0), end)
    torch.testing.assert_close(interpolate(start, end, 0.0), start)
    # from zeros (a LoRA B matrix's initialisation) it is η·end
    torch.testing.assert_close(interpolate(torch.zeros(3), end, 0.5), torch.tensor([2.0, 1.0, 0.5]))


def test_mean_of_products_by_hand():
    # B1 A1 = [[3], [4]] @ [[1, 2]] = [[3, 6], [4, 8]]; B2 A2 = [[2], [0]] @ [[0, 1]] = [[0, 2],
    # [0, 0]]; their mean [[1.5, 4], [2, 4]] = [[1.5, 1], [2, 0]] @ [[1, 2], [0, 1]]
    a, b = mean_of_products([torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]])],
                            [torch.tensor([[3.0], [4.0]]), torch.tensor([[2.0], [0.0]])])
    torch.testing.assert_close(a, torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    torch.testing.assert_close(b, torch.tensor([[1.5, 1.0], [2.0, 0.0]]))
    torch.testing.assert_close(b @ a, torch.tensor([[1.5, 4.0], [2.0, 4.0]]))
    # not the product of the means: ([[2.5], [2]] @ [[0.5, 1.5]]) = [[1.25, 3.75], [1, 3]]
    # one factor pair alone is itself
    a1, b1 = mean_of_products([torch.tensor([[1.0, 2.0]])], [torch.tensor([[3.0], [4.0]])])
    torch.testing.assert_close(b1 @ a1, torch.tensor([[3.0, 6.0], [4.0, 8.0]]))

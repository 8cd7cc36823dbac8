"""rlhfkit/models/forward.py without a model: the positions every forward pass and the decode loop
use. (Forward passes on tiny-llama: tests/models/test_loading.py, tests/models/test_packing.py.)"""
import torch

from rlhfkit.models.forward import position_ids_from


def test_position_ids_from_count_real_tokens_only(device):
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]], device=device)
    assert position_ids_from(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]

"""Hand values for chunked log-probs (rlhfkit/ops/logprobs.py)."""
import math

import torch

from rlhfkit.ops import entropy_from_logits, selective_logprobs, shift_for_next_token


def test_selective_logprobs_hand_value():
    # logits [0, ln 3] → softmax [1/4, 3/4]; label 1 → ln(3/4) = −0.287682
    logits = torch.tensor([[0.0, math.log(3.0)]])
    out = selective_logprobs(logits, torch.tensor([1]))
    assert math.isclose(out.item(), math.log(0.75), abs_tol=1e-6)


def test_selective_logprobs_equals_log_softmax_gather_for_any_chunk():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 5))
    reference = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    for chunk in (1, 4, 15, 1000):
        assert torch.allclose(selective_logprobs(logits, labels, chunk_size=chunk), reference,
                              atol=1e-12)


def test_selective_logprobs_gradient_matches_log_softmax():
    torch.manual_seed(1)
    a = torch.randn(4, 7, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    labels = torch.tensor([0, 3, 6, 2])
    selective_logprobs(a, labels, chunk_size=3).sum().backward()
    torch.log_softmax(b, -1).gather(-1, labels[:, None]).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_large_logits_stay_finite():
    logits = torch.tensor([[1000.0, 0.0]])
    assert selective_logprobs(logits, torch.tensor([1])).item() == -1000.0


def test_shift_pairs_logit_t_with_token_t_plus_1():
    ids = torch.tensor([[10, 11, 12, 13]])
    mask = torch.tensor([[False, False, True, True]])  # last two are the response
    labels, label_mask = shift_for_next_token(ids, mask)
    # logits at positions 0..2 predict tokens 11, 12, 13; only 12 and 13 are response tokens
    assert labels.tolist() == [[11, 12, 13]]
    assert label_mask.tolist() == [[False, True, True]]


def test_entropy_hand_values():
    # uniform over 4 → ln 4; one-hot-ish (1000, 0) → ~0
    out = entropy_from_logits(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]]))
    assert math.isclose(out[0].item(), math.log(4), abs_tol=1e-6)
    assert abs(out[1].item()) < 1e-6


def test_gathered_logprobs_reads_any_position_for_any_label_like_log_softmax():
    from rlhfkit.ops.logprobs import gathered_logprobs

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 0, 1, 1, 1])
    columns = torch.tensor([2, 2, 0, 1, 2])  # (0, 2) is read for two labels
    labels = torch.tensor([1, 4, 0, 3, 3])
    expected = torch.log_softmax(logits, -1)[rows, columns, labels]
    got = gathered_logprobs(logits, rows, columns, labels, chunk_size=2)  # chunks straddle rows
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    grad = logits.grad.clone()
    logits.grad = None
    expected.sum().backward()
    torch.testing.assert_close(grad, logits.grad)
    # a hand value: logits [0, ln 3] at one position → log p(label 1) = ln(3/4)
    two = torch.tensor([[[0.0, math.log(3.0)]]])
    torch.testing.assert_close(gathered_logprobs(two, torch.tensor([0]), torch.tensor([0]),
                                                 torch.tensor([1])),
                               torch.tensor([math.log(0.75)]))

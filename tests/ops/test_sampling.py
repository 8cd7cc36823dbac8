"""Hand values for next-token sampling (rlhfkit/ops/sampling.py), checked against HF's warpers.
Every test runs on each device (tests/conftest.py::device): the filters build index tensors and
the draw takes uniforms on the logits' device."""
import math

import pytest
import torch

from rlhfkit.ops.sampling import (
    NUCLEUS_CANDIDATES,
    filter_candidates,
    inverse_cdf_sample,
    sample_next_tokens,
    top_p_keep_mask,
)


def logs(*probs):
    return torch.log(torch.tensor([probs], dtype=torch.float32))


def test_top_p_keeps_tokens_whose_mass_before_is_below_top_p(device):
    # probs 0.5, 0.3, 0.2: mass before each = 0, 0.5, 0.8
    scores = logs(0.5, 0.3, 0.2).to(device)
    assert top_p_keep_mask(scores, 0.4).tolist() == [[True, False, False]]  # 0.5 ≥ 0.4
    assert top_p_keep_mask(scores, 0.6).tolist() == [[True, True, False]]   # 0.8 ≥ 0.6
    assert top_p_keep_mask(scores, 0.9).tolist() == [[True, True, True]]    # 0.8 < 0.9


def test_top_p_with_a_normaliser_over_the_whole_vocabulary(device):
    # the first two of probs 0.4, 0.3, (0.3 elsewhere): mass before = 0, 0.4 → 0.35 keeps one
    scores = logs(0.4, 0.3).to(device)
    log_norm = torch.zeros(1, device=device)  # the full distribution sums to 1
    assert top_p_keep_mask(scores, 0.35, log_norm).tolist() == [[True, False]]
    assert top_p_keep_mask(scores, 0.45, log_norm).tolist() == [[True, True]]


def test_top_k_keeps_the_k_largest_in_descending_order(device):
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0]], device=device)
    kept = filter_candidates(scores, top_k=2, top_p=1.0)
    assert kept.scores.tolist() == [[3.0, 2.0]] and kept.ids.tolist() == [[1, 2]]


def test_top_p_after_top_k_renormalises_over_the_k_kept(device):
    # HF order: top-k first, then top-p on the softmax of what is left.
    # top-2 of probs (0.4, 0.3, 0.2, 0.1) renormalised: 4/7 = 0.571, 3/7 = 0.429;
    # top_p 0.5: mass before the second = 0.571 ≥ 0.5 → cut (over the full vocabulary
    # it would be 0.4 < 0.5 → kept)
    scores = logs(0.4, 0.3, 0.2, 0.1).to(device)
    kept = filter_candidates(scores, top_k=2, top_p=0.5)
    assert kept.ids.tolist() == [[0, 1]]
    assert torch.isfinite(kept.scores).tolist() == [[True, False]]
    alone = filter_candidates(scores, top_k=0, top_p=0.5)
    assert torch.isfinite(alone.scores).sum().item() == 2


def test_no_filter_is_the_whole_vocabulary_unsorted(device):
    scores = torch.tensor([[0.5, -1.0, 2.0]], device=device)
    kept = filter_candidates(scores, top_k=0, top_p=1.0)
    assert torch.equal(kept.scores, scores) and kept.ids.tolist() == [[0, 1, 2]]


def hf_kept(scores, top_k, top_p):
    """Set of token ids HF's TopK/TopP warpers leave finite, per row."""
    warpers = pytest.importorskip("transformers.generation.logits_process")
    TopKLogitsWarper, TopPLogitsWarper = warpers.TopKLogitsWarper, warpers.TopPLogitsWarper

    out = scores.clone()
    if top_k > 0:
        out = TopKLogitsWarper(top_k)(None, out)
    if top_p < 1:
        out = TopPLogitsWarper(top_p)(None, out)
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in out]


def ours_kept(scores, top_k, top_p):
    kept = filter_candidates(scores, top_k, top_p)
    return [set(ids[torch.isfinite(s)].tolist()) for s, ids in zip(kept.scores, kept.ids)]


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (0, 0.3), (50, 1.0), (50, 0.8), (7, 0.95)])
def test_filters_keep_the_same_tokens_as_hf_warpers(top_k, top_p, device):
    gen = torch.Generator().manual_seed(0)
    peaked = (torch.randn(4, 2000, generator=gen) * 4).to(device)  # nucleus in the first topk try
    flat = (torch.randn(4, 2000, generator=gen) * 0.1).to(device)  # nucleus > NUCLEUS_CANDIDATES
    for scores in (peaked, flat):
        assert ours_kept(scores, top_k, top_p) == hf_kept(scores, top_k, top_p)
    if top_k == 0 and top_p == 0.9:
        assert len(ours_kept(flat, top_k, top_p)[0]) > NUCLEUS_CANDIDATES  # the sort fallback ran


def test_inverse_cdf_hand_values(device):
    # weights 1, 2, 1: W = 4, C = 1, 3, 4; u' = (1 − u)·4 picks the first C ≥ u'
    scores = torch.log(torch.tensor([[1.0, 2.0, 1.0]], device=device))
    pick = lambda u: inverse_cdf_sample(  # noqa: E731
        scores, torch.tensor([u], device=device)).item()
    assert pick(0.0) == 2    # u' = 4    → C_2
    assert pick(0.5) == 1    # u' = 2    → 1 < 2 ≤ 3
    assert pick(0.74) == 1   # u' = 1.04 → 1 < 1.04 ≤ 3
    assert pick(0.76) == 0   # u' = 0.96 ≤ C_0 = 1


def test_inverse_cdf_never_picks_a_filtered_token(device):
    # weights 1, 0, 1: C = 1, 1, 2; u' = 1 sits exactly on C_0 = C_1 → column 0, never 1
    scores = torch.tensor([[0.0, float("-inf"), 0.0]], device=device)
    assert inverse_cdf_sample(scores, torch.tensor([0.5], device=device)).item() == 0
    first_filtered = torch.tensor([[float("-inf"), 0.0]], device=device)
    assert inverse_cdf_sample(first_filtered, torch.tensor([0.9999999], device=device)).item() == 1


def test_greedy_is_argmax(device):
    logits = torch.tensor([[0.1, 2.0, 2.0, -1.0], [3.0, 0.0, 1.0, 2.9]], device=device)
    assert sample_next_tokens(logits, 0.0, 0, 1.0).tolist() == [1, 0]  # first index on ties
    assert sample_next_tokens(logits, 1.0, 1, 1.0).tolist() == [1, 0]  # top_k = 1 is greedy too


@pytest.mark.parametrize("temperature,top_k,top_p,expected", [
    # softmax(l / T) of l = log(0.5, 0.25, 0.15, 0.1): T = 1 gives the probs themselves
    (1.0, 0, 1.0, [0.5, 0.25, 0.15, 0.1]),
    # T = 0.5 squares them: 0.25, 0.0625, 0.0225, 0.01 over 0.345
    (0.5, 0, 1.0, [0.25 / 0.345, 0.0625 / 0.345, 0.0225 / 0.345, 0.01 / 0.345]),
    # top-2: 0.5, 0.25 over 0.75
    (1.0, 2, 1.0, [2 / 3, 1 / 3, 0.0, 0.0]),
    # top_p 0.8: mass before = 0, 0.5, 0.75, 0.9 → three kept, over 0.9
    (1.0, 0, 0.8, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0]),
])
def test_sampled_frequencies_match_the_distribution(temperature, top_k, top_p, expected, device):
    torch.manual_seed(0)
    n = 200_000
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1], device=device)).expand(n, 4)
    tokens = sample_next_tokens(logits, temperature, top_k, top_p)
    freq = torch.bincount(tokens, minlength=4).double() / n
    for f, p in zip(freq.tolist(), expected):
        assert abs(f - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12  # 5 binomial sigmas

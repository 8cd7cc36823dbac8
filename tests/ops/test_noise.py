"""The simulated annotator's noise (rlhfkit/ops/noise.py): hand values, then sampled frequencies
against the closed forms (tolerances: 4 binomial standard deviations or more)."""
import math

import torch

from rlhfkit.ops.noise import competition_ranks, noisy_ranks, preference_probability


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_competition_ranks_by_hand():
    # (3, 1, 2): 3 is best (rank 1), 2 second, 1 last; ties share the better rank: (2, 2, 1) →
    # (1, 1, 3); all equal → all 1.
    scores = torch.tensor([[3.0, 1.0, 2.0], [2.0, 2.0, 1.0], [0.5, 0.5, 0.5]])
    assert competition_ranks(scores).tolist() == [[1, 3, 2], [1, 1, 3], [1, 1, 1]]


def test_no_noise_is_the_judges_order_ties_included():
    scores = torch.tensor([[3.0, 1.0, 2.0], [2.0, 2.0, 1.0]])
    assert noisy_ranks(scores).tolist() == [[1, 3, 2], [1, 1, 3]]


def test_flip_probability_one_reverses_the_ranking():
    # reversed: the worst becomes best. (3, 1, 2) → (3, 1, 2) read as ranks of −s: −3 < −2 < −1.
    scores = torch.tensor([[3.0, 1.0, 2.0], [2.0, 2.0, 1.0]])
    assert noisy_ranks(scores, flip_prob=1.0).tolist() == [[3, 1, 2], [2, 2, 1]]


def test_preference_probability_by_hand():
    # σ(1) = 0.731059; with p = 0.2: 0.8·0.731059 + 0.2·0.268941 = 0.584847 + 0.053788 = 0.638635.
    assert abs(float(preference_probability(torch.tensor(1.0), 1.0)) - 0.7310586) < 1e-6
    assert abs(float(preference_probability(torch.tensor(1.0), 1.0, 0.2)) - 0.6386352) < 1e-6
    # T = 2 halves the gap: σ(0.5) = 0.622459
    assert abs(float(preference_probability(torch.tensor(1.0), 2.0)) - 0.6224593) < 1e-6
    # no noise: a step; a tie is a coin; any gap 0 is ½ whatever the noise
    assert preference_probability(torch.tensor([2.0, 0.0, -2.0])).tolist() == [1.0, 0.5, 0.0]
    assert float(preference_probability(torch.tensor(0.0), 1.0, 0.3)) == 0.5


def test_pair_frequency_matches_bradley_terry_with_flips():
    n = 40_000
    generator = torch.Generator().manual_seed(0)
    scores = torch.tensor([[1.0, 0.0]]).expand(n, 2)
    for temperature, flip in ((1.0, 0.0), (1.0, 0.2), (0.5, 0.1), (0.0, 0.3)):
        ranks = noisy_ranks(scores, temperature, flip, generator)
        share = (ranks[:, 0] < ranks[:, 1]).double().mean().item()
        expected = float(preference_probability(torch.tensor(1.0), temperature, flip))
        tolerance = 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9
        assert abs(share - expected) < max(tolerance, 1e-3), (temperature, flip, share, expected)
    assert abs(expected - 0.7) < 1e-12  # T = 0, p = 0.3: the judge's pair kept 70% of the time


def test_first_place_frequency_is_the_softmax():
    # Plackett–Luce: P(first = i) = softmax(s/T)_i; s = (1, 0, −1), T = 1 → (0.6652, 0.2447, 0.0900)
    n = 40_000
    generator = torch.Generator().manual_seed(1)
    scores = torch.tensor([[1.0, 0.0, -1.0]]).expand(n, 3)
    ranks = noisy_ranks(scores, 1.0, 0.0, generator)
    firsts = torch.bincount((ranks == 1).int().argmax(1), minlength=3).double() / n
    expected = torch.softmax(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), 0)
    assert torch.allclose(expected, torch.tensor([0.66524096, 0.24472847, 0.09003057],
                                                 dtype=torch.float64), atol=1e-7)
    for share, p in zip(firsts.tolist(), expected.tolist()):
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (firsts, expected)
    # every row is a permutation (continuous noise: no ties)
    assert (ranks.sort(1).values == torch.tensor([1, 2, 3])).all()


def test_seeded_generator_repeats_and_large_temperature_is_a_coin():
    scores = torch.tensor([[5.0, 0.0, 1.0, 2.0]]).expand(256, 4)
    a = noisy_ranks(scores, 1.0, 0.1, torch.Generator().manual_seed(7))
    b = noisy_ranks(scores, 1.0, 0.1, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    n = 40_000
    pair = torch.tensor([[1.0, 0.0]]).expand(n, 2)
    share = (noisy_ranks(pair, 1e6, 0.0, torch.Generator().manual_seed(2))[:, 0] == 1
             ).double().mean().item()
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / n)

"""Hand-derived checks of rlhfkit/ops/leaderboard.py.

Bradley–Terry: P(a ≻ b) = σ(θ_a − θ_b); Elo R = 1000 + 400·log10(e)·θ, mean 1000.
When every pair's observed share equals the model's probability the MLE fits it exactly:
    a wins 3 of 4 against b → θ_a − θ_b = ln 3 → gap 400·log10 3 = 190.84850188786497,
    each side ±95.42425094393249 around 1000.
"""
import math

import pytest
import torch

from rlhfkit.ops.leaderboard import (
    bootstrap_intervals,
    bradley_terry,
    ranking_pairs,
    win_rate,
)

GAP_3_TO_1 = 400 * math.log10(3)  # 190.84850188786497
TOL = 1e-9


def games(a, b, wins_a, wins_b, ties=0):
    return [(a, b, 1.0)] * wins_a + [(a, b, 0.0)] * wins_b + [(a, b, 0.5)] * ties


# ----------------------------------------------------------------------------- ranking_pairs
def test_a_ranking_of_three_with_a_tie_gives_its_three_pairs():
    # ranks [1, 2, 2]: x beats y, x beats z, y ties z — C(3, 2) = 3 pairs in candidate order
    assert ranking_pairs([1, 2, 2], ["x", "y", "z"]) == [
        ("x", "y", 1.0), ("x", "z", 1.0), ("y", "z", 0.5)]
    # the worse-ranked candidate first scores 0
    assert ranking_pairs([2, 1], ["x", "y"]) == [("x", "y", 0.0)]


def test_pairs_of_the_same_model_are_dropped():
    # slots 0 and 1 both by "p": (0, 1) says nothing about models; (0, 2) and (1, 2) remain
    assert ranking_pairs([1, 3, 2], ["p", "p", "q"]) == [("p", "q", 1.0), ("p", "q", 0.0)]
    assert ranking_pairs([1, 2], ["p", "p"]) == []
    with pytest.raises(ValueError, match="3 ranks for 2 models"):
        ranking_pairs([1, 2, 3], ["p", "q"])


# ----------------------------------------------------------------------------- bradley_terry
def test_three_wins_to_one_is_400_log10_3_apart():
    ratings = bradley_terry(games("a", "b", 3, 1), l2=0)
    assert ratings["a"] == pytest.approx(1000 + GAP_3_TO_1 / 2, abs=TOL)
    assert ratings["b"] == pytest.approx(1000 - GAP_3_TO_1 / 2, abs=TOL)


def test_the_default_l2_moves_a_fit_with_data_very_little():
    # λ = 0.01 against 4 comparisons: 189.59 instead of 190.85 (module doc); 400 comparisons
    # at the same odds: within 0.02 points
    small = bradley_terry(games("a", "b", 3, 1))
    assert 189 < small["a"] - small["b"] < GAP_3_TO_1
    large = bradley_terry(games("a", "b", 300, 100))
    assert large["a"] - large["b"] == pytest.approx(GAP_3_TO_1, abs=0.02)


def test_a_tie_counts_half():
    # symmetric ties → equal ratings; one win + one tie is a share of ¾, the same as 3:1
    assert bradley_terry(games("a", "b", 0, 0, ties=4), l2=0) == pytest.approx(
        {"a": 1000.0, "b": 1000.0}, abs=TOL)
    assert bradley_terry(games("a", "b", 2, 2), l2=0) == pytest.approx(
        {"a": 1000.0, "b": 1000.0}, abs=TOL)
    ratings = bradley_terry(games("a", "b", 1, 0, ties=1), l2=0)
    assert ratings["a"] - ratings["b"] == pytest.approx(GAP_3_TO_1, abs=TOL)


def test_three_models_in_order():
    # a ≻ b 3:1, b ≻ c 3:1, a ≻ c 9:1: consistent with θ = (ln 3, 0, −ln 3) exactly
    # (σ(ln 9) = 9/10), so the ratings are 1000 + (190.85, 0, −190.85); the mean is 1000
    comparisons = games("a", "b", 3, 1) + games("b", "c", 3, 1) + games("c", "a", 1, 9)
    ratings = bradley_terry(comparisons, l2=0)
    assert ratings == pytest.approx({"a": 1000 + GAP_3_TO_1, "b": 1000.0,
                                     "c": 1000 - GAP_3_TO_1}, abs=TOL)
    assert sorted(ratings, key=ratings.get, reverse=True) == ["a", "b", "c"]


def test_scale_and_base():
    # scale s → gap s·log10 3; base moves every rating
    ratings = bradley_terry(games("a", "b", 3, 1), l2=0, scale=100, base=0)
    assert ratings == pytest.approx({"a": 50 * math.log10(3), "b": -50 * math.log10(3)}, abs=TOL)


def test_repeating_every_comparison_changes_nothing():
    comparisons = games("a", "b", 5, 2, ties=1) + games("b", "c", 1, 3) + games("a", "c", 4, 1)
    once = bradley_terry(comparisons, l2=0)
    assert bradley_terry(comparisons * 3, l2=0) == pytest.approx(once, abs=1e-8)


def test_the_fit_is_the_likelihoods_stationary_point():
    # the naive version: autograd of the plain log-likelihood at the returned ratings is 0
    comparisons = games("a", "b", 5, 2, ties=1) + games("b", "c", 1, 3) + games("a", "c", 4, 1)
    ratings = bradley_terry(comparisons, l2=0)
    theta = {m: torch.tensor((r - 1000) * math.log(10) / 400, dtype=torch.float64,
                             requires_grad=True) for m, r in ratings.items()}
    nll = sum(-(s * torch.nn.functional.logsigmoid(theta[a] - theta[b])
                + (1 - s) * torch.nn.functional.logsigmoid(theta[b] - theta[a]))
              for a, b, s in comparisons)
    nll.backward()
    for value in theta.values():
        assert abs(value.grad.item()) < 1e-9


def test_perfect_records_and_disconnected_models_stay_finite():
    # a won all 3: no finite MLE; λ = 0.01 keeps it at 837 points (module doc), growing slowly
    three = bradley_terry(games("a", "b", 3, 0))
    many = bradley_terry(games("a", "b", 300, 0))
    assert 800 < three["a"] - three["b"] < many["a"] - many["b"] < 2000
    # two separate pairs: each has its own gap, both centred on the common mean
    ratings = bradley_terry(games("a", "b", 3, 1) + games("c", "d", 3, 1))
    assert ratings["a"] == pytest.approx(ratings["c"], abs=1e-9)
    assert ratings["b"] == pytest.approx(ratings["d"], abs=1e-9)
    assert sum(ratings.values()) / 4 == pytest.approx(1000, abs=1e-9)


def test_models_without_comparisons_sit_at_the_mean():
    ratings = bradley_terry(games("a", "b", 3, 1), models=["a", "b", "new"], l2=0)
    assert ratings == pytest.approx({"a": 1000 + GAP_3_TO_1 / 2, "b": 1000 - GAP_3_TO_1 / 2,
                                     "new": 1000.0}, abs=TOL)
    with pytest.raises(ValueError, match=r"not in models=: \['b'\]"):
        bradley_terry(games("a", "b", 1, 1), models=["a"])
    assert bradley_terry([]) == {}


# ----------------------------------------------------------------------------- bootstrap
def by_judgment(comparisons):
    return [[c] for c in comparisons]


def test_one_judgment_resamples_to_itself():
    # J = 1: every resample is that judgment → the interval is the point, for each model
    judgment = [ranking_pairs([1, 2, 3], ["a", "b", "c"])]
    point = bradley_terry(judgment[0])
    intervals = bootstrap_intervals(judgment, n=50)
    for model, (lo, hi) in intervals.items():
        assert lo == pytest.approx(point[model], abs=1e-9)
        assert hi == pytest.approx(point[model], abs=1e-9)


def test_interval_holds_the_estimate_and_narrows_with_more_data():
    # 30 comparisons, no perfect record; × 4 and × 16 judgments: the width falls like 1/√J,
    # so 4× the judgments halve it (measured over seeds 0–4: 0.45–0.56)
    comparisons = games("a", "b", 6, 4) + games("b", "c", 6, 4) + games("a", "c", 7, 3)
    point = bradley_terry(comparisons)
    small = bootstrap_intervals(by_judgment(comparisons * 4), n=500, seed=1)
    large = bootstrap_intervals(by_judgment(comparisons * 16), n=500, seed=1)
    for model in point:
        assert small[model][0] < point[model] < small[model][1]
        assert large[model][0] < point[model] < large[model][1]
        ratio = (large[model][1] - large[model][0]) / (small[model][1] - small[model][0])
        assert 0.4 < ratio < 0.6
    assert bootstrap_intervals(by_judgment(comparisons * 4), n=500, seed=1) == small  # seeded


def test_a_judgments_pairs_are_resampled_together():
    # one judgment holding a win and a loss: every resample draws both → 0.5 each time, where
    # resampling the two pairs one by one would give 0 or 1 half the time
    assert win_rate([[("a", "b", 1.0), ("a", "b", 0.0)]], "a", "b") == (0.5, 0.5, 0.5)
    # two such judgments of opposite outcomes do spread: a's share is 1, ½ or 0
    rate, lo, hi = win_rate([games("a", "b", 2, 0), games("a", "b", 0, 2)], "a", "b", n=400)
    assert (rate, lo, hi) == (0.5, 0.0, 1.0)


def test_win_rate_counts_ties_half_from_either_side():
    # a vs b listed either way round: a wins 2, loses 1, ties 1 → (2 + ½) / 4 = 0.625
    grouped = [[("a", "b", 1.0)], [("b", "a", 0.0)], [("b", "a", 1.0)], [("a", "b", 0.5)],
               [("a", "c", 1.0)]]
    rate, lo, hi = win_rate(grouped, "a", "b", n=300)
    assert rate == 0.625 and 0 <= lo < rate < hi <= 1
    assert win_rate(grouped, "b", "a", n=300)[0] == 0.375
    # every judgment won by a: every resample says 1
    assert win_rate([[("a", "b", 1.0)]] * 5, "a", "b") == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no comparison of 'b' with 'c'"):
        win_rate(grouped, "b", "c")


def test_bootstrap_arguments_are_checked():
    with pytest.raises(ValueError, match="n=0"):
        bootstrap_intervals([[("a", "b", 1.0)]], n=0)
    with pytest.raises(ValueError, match="level=1"):
        win_rate([[("a", "b", 1.0)]], "a", "b", level=1)
    with pytest.raises(ValueError, match="score 2"):
        bradley_terry([("a", "b", 2)])

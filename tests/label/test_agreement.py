"""Hand values of rlhfkit/label/agreement.py (pure functions, no database)."""
import pytest

from rlhfkit.label.agreement import (
    Judgment,
    alpha_of_judgments,
    annotator_stats,
    copeland,
    krippendorff_alpha,
    pairwise_agreement,
    scores_as_ranks,
)


def j(task, who, ranks, shown=None, seconds=None, flags=()):
    return Judgment(task, who, tuple(ranks), tuple(shown or range(len(ranks))), seconds, flags)


def test_pairwise_agreement():
    # task 1: A (1,2,3) vs B (1,3,2): pairs (0,1) +/+ agree, (0,2) +/+ agree, (1,2) +/− no → 2/3
    # task 2: A (1,1) vs C (1,2): (0,1) tie/+ → disagree;  task 3: one annotator, not counted
    # → 2 of 4
    judgments = [j(1, "A", [1, 2, 3]), j(1, "B", [1, 3, 2]), j(2, "A", [1, 1]),
                 j(2, "C", [1, 2]), j(3, "A", [2, 1])]
    assert pairwise_agreement(judgments) == 0.5
    assert pairwise_agreement([j(1, "A", [1, 2])]) is None


def test_alpha_published_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", §C: 4 observers ×
    12 units, values 1–5 with missing ones; the paper gives α = 0.815 for the ordinal metric
    (0.743 nominal, 0.849 interval). 0.8153875037548814 is also what the `krippendorff`
    package (0.9.0) computes for it (checked once by hand, not a dependency)."""
    n = None
    observers = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
                 [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
                 [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
                 [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [list(unit) for unit in zip(*observers)]
    alpha = krippendorff_alpha(units)
    assert round(alpha, 3) == 0.815
    assert alpha == pytest.approx(0.8153875037548814, abs=1e-12)


def test_alpha_by_hand():
    # units [1, 1] and [2, 3]: o_11 = 2, o_23 = o_32 = 1; n_1 = 2, n_2 = n_3 = 1, n = 4.
    # ordinal δ²: δ²_23 = (n_2 + n_3 − (n_2 + n_3)/2)² = 1; δ²_12 = (3 − 1.5)² = 2.25;
    # δ²_13 = (4 − 1.5)² = 6.25. Σ o δ² = 2 · 1 = 2.
    # Σ n_c n_k δ² = 2 · (2·1·2.25 + 2·1·6.25 + 1·1·1) = 36.  α = 1 − 3 · 2 / 36 = 5/6
    assert krippendorff_alpha([[1, 1], [2, 3]]) == pytest.approx(5 / 6, abs=1e-12)
    # a K = 2 task ranked in reverse by two annotators: units (1,2) and (2,1):
    # o_12 = o_21 = 2, n_1 = n_2 = 2, n = 4, δ²_12 = (4 − 2)² = 4;
    # α = 1 − 3 · (2·2·4) / (2·2·2·4) = 1 − 3/2 = −0.5
    judgments = [j(1, "A", [1, 2]), j(1, "B", [2, 1])]
    assert alpha_of_judgments(judgments) == pytest.approx(-0.5, abs=1e-12)
    assert alpha_of_judgments([j(1, "A", [1, 2]), j(1, "B", [1, 2])]) == pytest.approx(1.0)
    assert krippendorff_alpha([[1], [2, None]]) is None  # nothing pairable


@pytest.mark.parametrize("rankings, merged", [
    ([(1, 2, 2, 3)], (1, 2, 2, 3)),  # one ranking comes back as it is, ties included
    # A (1,2,3), B (1,3,2), C (2,1,3): 0 beats 1 (2:1) and 2 (3:0), 1 beats 2 (2:1)
    ([(1, 2, 3), (1, 3, 2), (2, 1, 3)], (1, 2, 3)),
    ([(1, 2), (2, 1)], (1, 1)),  # no majority: a tie
    # a Condorcet cycle: 0 ≻ 1 (2:1), 1 ≻ 2 (2:1), 2 ≻ 0 (2:1) → one win each, all tie
    ([(1, 2, 3), (2, 3, 1), (3, 1, 2)], (1, 1, 1)),
    # B and C agree 0 is best, split on 1 vs 2: scores 2, ½, ½
    ([(1, 3, 2), (1, 2, 3)], (1, 2, 2)),
])
def test_copeland(rankings, merged):
    assert copeland(rankings) == merged


def test_scores_as_ranks():
    assert scores_as_ranks([0.5, 2.0, 0.5, -1.0]) == (2, 1, 2, 3)


def test_annotator_stats():
    judgments = [
        j(1, "A", [1, 2, 3], shown=[0, 1, 2], seconds=10.0),
        j(1, "B", [1, 3, 2], shown=[2, 1, 0], seconds=20.0),
        j(1, "C", [1, 2, 3], shown=[1, 0, 2]),
        j(2, "A", [2, 1], shown=[1, 0], seconds=30.0, flags=("all_bad",)),
    ]
    rm = {1: [0.5, 0.2, 0.1], 2: [1.0, 1.0]}  # RM ranks (1,2,3) and a tie
    rows = {row["name"]: row for row in annotator_stats(judgments, rm)}
    a, b, c = rows["A"], rows["B"], rows["C"]
    assert (a["judgments"], a["median_seconds"], a["all_bad"]) == (2, 20.0, 1)  # median(10, 30)
    # A vs the others of task 1, Copeland(B, C) = (1,2,2): strict pairs (0,1), (0,2); A agrees
    assert a["agreement_with_majority"] == 1.0
    # A's strict pairs vs the RM: task 1 three agree; task 2 (0,1) the RM ties → 3/4
    assert a["agreement_with_rm"] == 0.75
    # first shown ranked best: task 1 slot 0 rank 1, task 2 slot 1 rank 1 → 2/2; chance ½(⅓+½)
    assert a["first_shown_best_share"] == 1.0
    assert a["first_shown_best_chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # B vs Copeland(A, C) = (1,2,3): (0,1), (0,2) agree, (1,2) not → 2/3; same vs the RM
    assert b["agreement_with_majority"] == pytest.approx(2 / 3)
    assert b["agreement_with_rm"] == pytest.approx(2 / 3)
    assert b["first_shown_best_share"] == 0.0  # slot 2 shown first, ranked 2nd
    assert c["median_seconds"] is None and c["agreement_with_majority"] == 1.0
    assert annotator_stats([j(1, "A", [1, 2])])[0]["agreement_with_majority"] is None

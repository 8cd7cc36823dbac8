"""Agreement and consensus over rankings: pure functions of plain lists (no database).

A ranking is a tuple of ranks aligned with a task's candidates (canonical slot order),
1 = best, equal numbers = tie. Pair (i, j), i < j, has the sign +1 (i ranked better), −1
(j better) or 0 (tie).

- ``pairwise_agreement``: over every task judged by two or more annotators, every pair of
  those annotators and every candidate pair: the share of equal signs (a tie agrees only
  with a tie).
- ``krippendorff_alpha``: Krippendorff's α with the ordinal metric (Krippendorff 2011,
  "Computing Krippendorff's Alpha-Reliability", §C and the ordinal δ² of §E): units are
  (task, candidate), the values the ranks given to it; chance-corrected, handles missing
  values and any number of annotators.
- ``copeland``: several annotators' rankings of one task → one, by Copeland's method on
  pairwise majorities (why: docs/label.md, "Merging").
- ``annotator_stats``: per annotator, judgments, median seconds, agreement with the
  others' majority, agreement with a reward model, position bias.
Tests: tests/label/test_agreement.py (hand values, the published α example).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from itertools import combinations
from typing import NamedTuple


class Judgment(NamedTuple):
    task_id: int
    annotator: str
    ranks: tuple  # canonical slot order, 1 = best
    shown_slots: tuple  # slots in the order they were shown
    seconds: float | None
    flags: tuple = ()


def sign(ranks, i: int, j: int) -> int:
    """+1 when slot i is ranked better than slot j, −1 when worse, 0 when tied."""
    return (ranks[i] < ranks[j]) - (ranks[i] > ranks[j])


def by_task(judgments: list[Judgment]) -> dict[int, list[Judgment]]:
    grouped = defaultdict(list)
    for judgment in judgments:
        grouped[judgment.task_id].append(judgment)
    return dict(grouped)


def pairwise_agreement(judgments: list[Judgment]) -> float | None:
    """Share of (annotator pair, candidate pair) comparisons with the same sign; None when no
    task has two annotators."""
    agree = total = 0
    for group in by_task(judgments).values():
        k = len(group[0].ranks)
        for a, b in combinations(group, 2):
            for i, j in combinations(range(k), 2):
                agree += sign(a.ranks, i, j) == sign(b.ranks, i, j)
                total += 1
    return agree / total if total else None


def krippendorff_alpha(units: list[list]) -> float | None:
    """Krippendorff's α, ordinal metric. ``units``: one list per unit of the values the coders
    gave it (missing values left out or None). Units with fewer than two values are not
    pairable and drop out. None when fewer than two values are pairable or all agree on one.

        o_ck = Σ_u (number of c–k pairs of values in u) / (m_u − 1)   coincidences
        n_c = Σ_k o_ck,   n = Σ_c n_c
        δ²_ck = (Σ_{g = c..k} n_g − (n_c + n_k) / 2)²                 ordinal metric
        α = 1 − (n − 1) · Σ o_ck δ²_ck / Σ n_c n_k δ²_ck
    """
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [unit for unit in pairable if len(unit) >= 2]
    coincidence = defaultdict(float)
    for unit in pairable:
        for a, b in combinations(range(len(unit)), 2):
            coincidence[unit[a], unit[b]] += 1 / (len(unit) - 1)
            coincidence[unit[b], unit[a]] += 1 / (len(unit) - 1)
    totals = defaultdict(float)
    for (c, _), o in coincidence.items():
        totals[c] += o
    values = sorted(totals)
    n = sum(totals.values())
    if n < 2 or len(values) < 2:
        return None
    index = {v: i for i, v in enumerate(values)}
    cumulative = [0.0]
    for v in values:
        cumulative.append(cumulative[-1] + totals[v])

    def delta2(c, k):
        lo, hi = sorted((index[c], index[k]))
        return (cumulative[hi + 1] - cumulative[lo] - (totals[c] + totals[k]) / 2) ** 2

    observed = sum(o * delta2(c, k) for (c, k), o in coincidence.items())
    expected = sum(totals[c] * totals[k] * delta2(c, k) for c in values for k in values)
    return 1 - (n - 1) * observed / expected


def alpha_of_judgments(judgments: list[Judgment]) -> float | None:
    """α over units (task, candidate) of the tasks judged by two or more annotators."""
    units = []
    for group in by_task(judgments).values():
        if len(group) >= 2:
            units += [[j.ranks[slot] for j in group] for slot in range(len(group[0].ranks))]
    return krippendorff_alpha(units)


def copeland(rankings: list[tuple]) -> tuple:
    """Merge rankings of one task's K candidates → dense ranks (1 = best, ties allowed).

    Each candidate scores 1 for every other candidate a strict majority of the rankings puts
    below it and ½ for every pair without a majority (equal counts, ties included); the ranks
    follow the scores, equal scores tie. One ranking comes back unchanged (ties included).
    """
    k = len(rankings[0])
    score = [0.0] * k
    for i, j in combinations(range(k), 2):
        margin = sum(sign(r, i, j) for r in rankings)
        if margin > 0:
            score[i] += 1
        elif margin < 0:
            score[j] += 1
        else:
            score[i] += 0.5
            score[j] += 0.5
    levels = sorted(set(score), reverse=True)
    return tuple(levels.index(s) + 1 for s in score)


def agreement_with(ranks, reference) -> tuple[int, int]:
    """(agreeing, counted) over pairs the reference orders strictly: same strict order agrees."""
    agree = total = 0
    for i, j in combinations(range(len(ranks)), 2):
        s = sign(reference, i, j)
        if s:
            total += 1
            agree += sign(ranks, i, j) == s
    return agree, total


def first_shown_best(judgment: Judgment) -> bool:
    """The first response shown got the best rank (ties for best included)."""
    return judgment.ranks[judgment.shown_slots[0]] == min(judgment.ranks)


def annotator_stats(judgments: list[Judgment], rm_scores: dict | None = None) -> list[dict]:
    """Per annotator (sorted by name). ``rm_scores``: task id → the K candidates' reward-model
    scores; a score is turned into ranks (higher = better) to compare with the annotator's.

    agreement_with_majority: pairs ordered strictly by the Copeland merge of the *other*
    annotators of the same task, share the annotator orders the same way (None: no overlap).
    agreement_with_rm: pairs the annotator orders strictly, share the RM orders alike.
    first_shown_best_share: judgments whose first-shown response was ranked best; without a
    position bias it is near first_shown_best_chance = mean of 1/K.
    """
    groups = by_task(judgments)
    per = defaultdict(list)
    for judgment in judgments:
        per[judgment.annotator].append(judgment)
    rows = []
    for name in sorted(per):
        mine = per[name]
        majority = [0, 0]
        rm = [0, 0]
        for judgment in mine:
            others = [o.ranks for o in groups[judgment.task_id] if o.annotator != name]
            if others:
                a, t = agreement_with(judgment.ranks, copeland(others))
                majority[0], majority[1] = majority[0] + a, majority[1] + t
            scores = (rm_scores or {}).get(judgment.task_id)
            if scores is not None and None not in scores:
                a, t = agreement_with(scores_as_ranks(scores), judgment.ranks)
                rm[0], rm[1] = rm[0] + a, rm[1] + t
        seconds = [j.seconds for j in mine if j.seconds is not None]
        rows.append({
            "name": name, "judgments": len(mine),
            "median_seconds": statistics.median(seconds) if seconds else None,
            "agreement_with_majority": majority[0] / majority[1] if majority[1] else None,
            "agreement_with_rm": rm[0] / rm[1] if rm[1] else None,
            "first_shown_best_share": sum(map(first_shown_best, mine)) / len(mine),
            "first_shown_best_chance": sum(1 / len(j.ranks) for j in mine) / len(mine),
            "all_bad": sum("all_bad" in j.flags for j in mine)})
    return rows


def scores_as_ranks(scores) -> tuple:
    """Scores (higher = better) → dense ranks, 1 = best; equal scores tie."""
    levels = sorted(set(scores), reverse=True)
    return tuple(levels.index(s) + 1 for s in scores)

"""The leaderboard of the models (checkpoints) whose candidates people ranked: every judgment in
the store → its pairwise comparisons between different models (a ranking of K gives C(K, 2),
ties half, pairs of one model's candidates dropped) → Bradley–Terry ratings on the Elo scale
with 95% intervals from a bootstrap over judgments (the math and why:
rlhfkit/ops/leaderboard.py; docs/label.md, "Leaderboard").

Each judgment counts as it was given, one annotator's ranking of one task: several annotators
of a task are several judgments (not merged as ``label export`` merges them), and a judgment
flagged "all bad" still orders its candidates. ``tag_prefix`` keeps the tasks whose
``tasks.tag`` starts with it (``round-1/`` : the tasks of round 1).
Tests: tests/label/test_leaderboard.py.
"""
from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select

from rlhfkit.label.export import load_judgments, of_tasks
from rlhfkit.label.schema import candidates
from rlhfkit.label.store import Store
from rlhfkit.ops.leaderboard import (
    Comparison,
    bootstrap_intervals,
    bradley_terry,
    ranking_pairs,
)


def _models_by_task(conn, tag_prefix: str | None = None) -> dict[int, list[str]]:
    """task id → the model of each candidate, slot order (of the tasks ``tag_prefix`` keeps)."""
    query = (select(candidates.c.task_id, candidates.c.model)
             .order_by(candidates.c.task_id, candidates.c.slot))
    out = defaultdict(list)
    for task_id, model in conn.execute(of_tasks(query, candidates, tag_prefix)):
        out[task_id].append(model)
    return dict(out)


def comparisons_by_judgment(store: Store, tag_prefix: str | None = None
                            ) -> list[list[Comparison]]:
    """One list of (model_a, model_b, score_a) per judgment (store order), only judgments that
    compare two different models; ``tag_prefix``: only tasks whose tag starts with it (both
    queries select by tag: nothing of other tasks is read)."""
    with store.engine.connect() as conn:
        judged = load_judgments(conn, tag_prefix)
        models = _models_by_task(conn, tag_prefix)
    grouped = [ranking_pairs(list(j.ranks), models[j.task_id]) for j in judged]
    return [group for group in grouped if group]


def leaderboard(store: Store, tag_prefix: str | None = None, n: int = 1000,
                seed: int = 0) -> list[dict]:
    """Rows {"model", "elo", "lo", "hi", "comparisons"}, best first (ties by name): the
    Bradley–Terry rating, its 95% bootstrap interval over ``n`` resamples of the judgments
    (None, None when n = 0) and the number of pairwise comparisons the model took part in."""
    grouped = comparisons_by_judgment(store, tag_prefix)
    flat = [c for group in grouped for c in group]
    ratings = bradley_terry(flat)
    intervals = bootstrap_intervals(grouped, n=n, seed=seed) if n and grouped else {}
    played = defaultdict(int)
    for a, b, _ in flat:
        played[a] += 1
        played[b] += 1
    return [{"model": model, "elo": ratings[model], "lo": intervals.get(model, (None,))[0],
             "hi": intervals.get(model, (None, None))[1], "comparisons": played[model]}
            for model in sorted(ratings, key=lambda m: (-ratings[m], m))]

"""Read judgments out of the store: stats for the admin page and `label stats`, and the
training files `label export` writes.

- ``--format ranked`` (for ``rlhfkit rm``): {"prompt", "responses": [best … worst],
  "ranks": [1, 2, 2, 3]} (equal numbers = tie; the RM loss skips tied pairs).
- ``--format pairs`` (for ``rlhfkit dpo``): {"prompt", "chosen", "rejected"}, one row per
  pair of candidates the merged ranking orders strictly (ties give no pair).
Several annotators' rankings of a task are merged with ``agreement.copeland``. A task is
dropped when a majority of its judgments flag it "all_bad" (unless ``keep_all_bad``) and when
the merge orders nothing (all tied). ``tag_prefix`` keeps the tasks whose ``tasks.tag`` starts
with it (`label stats|export --tag`, as `label leaderboard --tag`). Tests:
tests/label/test_export.py, tests/label/test_commands.py (--tag).
"""
from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations

from sqlalchemy import select

from rlhfkit.label.agreement import (
    Judgment,
    alpha_of_judgments,
    annotator_stats,
    by_task,
    copeland,
    pairwise_agreement,
)
from rlhfkit.label.schema import annotators, candidates, judgments, prompts, tasks
from rlhfkit.label.store import Store

FORMATS = ("ranked", "pairs")


def tagged(query, tag_prefix: str | None):
    """``query`` (over ``tasks``, or joined with it) limited to the tasks whose tag starts with
    ``tag_prefix``; None: unchanged. A task without a tag matches no prefix."""
    if tag_prefix is None:
        return query
    return query.where(tasks.c.tag.startswith(tag_prefix, autoescape=True))


def of_tasks(query, table, tag_prefix: str | None):
    """``query`` over ``table`` (a table with ``task_id``) limited by ``tagged``."""
    if tag_prefix is None:
        return query
    return tagged(query.join(tasks, tasks.c.id == table.c.task_id), tag_prefix)


def load_judgments(conn, tag_prefix: str | None = None) -> list[Judgment]:
    """The judgments (store order) of the tasks ``tag_prefix`` keeps (every query selects by
    tag: nothing of other tasks is read)."""
    slots = dict(conn.execute(of_tasks(select(candidates.c.id, candidates.c.slot), candidates,
                                        tag_prefix)).all())
    query = (select(judgments.c.task_id, annotators.c.name, judgments.c.ranks,
                    judgments.c.shown_order, judgments.c.seconds, judgments.c.server_seconds,
                    judgments.c.flags)
             .join(annotators, annotators.c.id == judgments.c.annotator_id)
             .order_by(judgments.c.id))
    rows = conn.execute(of_tasks(query, judgments, tag_prefix))
    return [Judgment(task_id, name, tuple(ranks), tuple(slots[c] for c in shown),
                     seconds if seconds is not None else server_seconds, tuple(flags))
            for task_id, name, ranks, shown, seconds, server_seconds, flags in rows]


def load_candidates(conn) -> dict[int, list]:
    """task id → its candidates (slot order) as (text, rm_score)."""
    out = defaultdict(list)
    for task_id, text, score in conn.execute(
            select(candidates.c.task_id, candidates.c.text, candidates.c.rm_score)
            .order_by(candidates.c.task_id, candidates.c.slot)):
        out[task_id].append((text, score))
    return dict(out)


def summary(store: Store, tag_prefix: str | None = None) -> dict:
    """What the admin page and `rlhfkit label stats` show (of the tasks ``tag_prefix`` keeps)."""
    with store.engine.connect() as conn:
        settings = store.settings(conn)
        all_judgments = load_judgments(conn, tag_prefix)
        cands = load_candidates(conn)
        people = conn.execute(select(annotators.c.name, annotators.c.active)
                              .order_by(annotators.c.name)).all()
        n_tasks = len(conn.execute(tagged(select(tasks.c.id), tag_prefix)).all())
    groups = by_task(all_judgments)
    rm_scores = {t: [s for _, s in c] for t, c in cands.items()}
    stats = {row["name"]: row for row in annotator_stats(all_judgments, rm_scores)}
    empty = {"judgments": 0, "median_seconds": None, "agreement_with_majority": None,
             "agreement_with_rm": None, "first_shown_best_share": None,
             "first_shown_best_chance": None, "all_bad": 0}
    return {
        "tasks": n_tasks, "judgments": len(all_judgments),
        "complete": sum(len(g) >= settings.overlap for g in groups.values()),
        "overlap": settings.overlap, "order": settings.order,
        "agreement": {"overlapping_tasks": sum(len(g) >= 2 for g in groups.values()),
                      "pairwise": pairwise_agreement(all_judgments),
                      "krippendorff_alpha_ordinal": alpha_of_judgments(all_judgments)},
        "annotators": [{**empty, **stats.get(name, {}), "name": name, "active": bool(active)}
                       for name, active in people]}


def merged_tasks(store: Store, keep_all_bad: bool = False,
                 tag_prefix: str | None = None) -> list[dict]:
    """Every judged task → {"task_id", "prompt", "texts", "ranks", "judgments"}, merged."""
    with store.engine.connect() as conn:
        groups = by_task(load_judgments(conn, tag_prefix))
        cands = load_candidates(conn)
        prompt_of = dict(conn.execute(select(tasks.c.id, prompts.c.text)
                                      .join(prompts, prompts.c.id == tasks.c.prompt_id)).all())
    out = []
    for task_id in sorted(groups):
        group = groups[task_id]
        if not keep_all_bad and 2 * sum("all_bad" in j.flags for j in group) > len(group):
            continue
        ranks = copeland([j.ranks for j in group])
        if len(set(ranks)) < 2:  # all tied: nothing to learn
            continue
        out.append({"task_id": task_id, "prompt": prompt_of[task_id],
                    "texts": [text for text, _ in cands[task_id]], "ranks": ranks,
                    "judgments": len(group)})
    return out


def ranked_rows(merged: list[dict]) -> list[dict]:
    rows = []
    for task in merged:
        order = sorted(range(len(task["ranks"])), key=lambda s: (task["ranks"][s], s))
        rows.append({"prompt": task["prompt"], "responses": [task["texts"][s] for s in order],
                     "ranks": [task["ranks"][s] for s in order], "task_id": task["task_id"],
                     "judgments": task["judgments"]})
    return rows


def pair_rows(merged: list[dict]) -> list[dict]:
    rows = []
    for task in merged:
        ranks, texts = task["ranks"], task["texts"]
        for i, j in combinations(range(len(ranks)), 2):
            if ranks[i] != ranks[j]:
                best, worst = (i, j) if ranks[i] < ranks[j] else (j, i)
                rows.append({"prompt": task["prompt"], "chosen": texts[best],
                             "rejected": texts[worst], "task_id": task["task_id"]})
    return rows


def export_lines(store: Store, fmt: str, keep_all_bad: bool = False,
                 tag_prefix: str | None = None) -> list[str]:
    merged = merged_tasks(store, keep_all_bad, tag_prefix)
    rows = ranked_rows(merged) if fmt == "ranked" else pair_rows(merged)
    return [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]

"""Assignment: who judges what, leases, and the one-transaction submit.

- A task goes to ``overlap`` annotators, never twice to the same one (unique (task,
  annotator) on assignments and on judgments). Its slots are taken by judgments and by leases
  not yet expired; a task with ``overlap`` judgments leaves the queue.
- Opening a task leases it for ``lease_seconds``; an annotator who comes back gets their own
  open lease again (same shown order). An expired lease frees its slot for someone else.
- Order: ``fifo`` (import order), ``random`` (a random key drawn at import), ``uncertainty``
  (smallest gap between the reward-model scores of a task's candidates first; unscored last).
- Submit is one transaction: the judgment row and the assignment's state together; a second
  identical POST finds the judgment and returns it (idempotent), the unique constraint
  settles a race between two such POSTs.
Tests: tests/label/test_queue.py.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from rlhfkit.label.store import (
    FLAGS,
    Store,
    annotators,
    assignments,
    candidates,
    judgments,
    prompts,
    tasks,
)

MAX_COMMENT = 4000


class QueueError(Exception):
    """A request the queue refuses: ``status`` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    active: bool


def annotator_by_token_hash(store: Store, token_hash: str) -> Annotator | None:
    with store.engine.connect() as conn:  # a read: no write lock needed
        row = conn.execute(select(annotators.c.id, annotators.c.name, annotators.c.active)
                           .where(annotators.c.token_hash == token_hash)).first()
    return Annotator(*row) if row else None


def _occupied(now: float):
    """Per task: judgments plus unexpired leases (a subquery: task_id, n)."""
    taken = or_(assignments.c.state == "done",
                and_(assignments.c.state == "leased", assignments.c.expires_at > now))
    return (select(assignments.c.task_id, func.count().label("n")).where(taken)
            .group_by(assignments.c.task_id).subquery())


def _queue_query(annotator_id: int, overlap: int, order: str, now: float):
    """Tasks this annotator may take next: room left and never assigned to them."""
    occupied = _occupied(now)
    mine = exists().where(assignments.c.task_id == tasks.c.id,
                          assignments.c.annotator_id == annotator_id)
    query = (select(tasks.c.id).outerjoin(occupied, occupied.c.task_id == tasks.c.id)
             .where(func.coalesce(occupied.c.n, 0) < overlap, ~mine))
    keys = {"fifo": [tasks.c.id],
            "random": [tasks.c.random_key, tasks.c.id],
            "uncertainty": [tasks.c.score_gap.is_(None), tasks.c.score_gap, tasks.c.id]}[order]
    return query.order_by(*keys)


def queue_size(conn, annotator_id: int, overlap: int, now: float | None = None) -> int:
    query = _queue_query(annotator_id, overlap, "fifo", now or time.time()).order_by(None)
    return conn.execute(select(func.count()).select_from(query.subquery())).scalar()


def done_count(conn, annotator_id: int) -> int:
    return conn.execute(select(func.count()).select_from(judgments)
                        .where(judgments.c.annotator_id == annotator_id)).scalar()


def _task_view(conn, task_id: int, shown_order: list[int]) -> dict:
    prompt = conn.execute(select(prompts.c.text).join(tasks, tasks.c.prompt_id == prompts.c.id)
                          .where(tasks.c.id == task_id)).scalar()
    texts = dict(conn.execute(select(candidates.c.id, candidates.c.text)
                              .where(candidates.c.task_id == task_id)).all())
    return {"task_id": task_id, "prompt": prompt,
            "candidates": [{"id": cid, "text": texts[cid]} for cid in shown_order]}


def next_task(store: Store, annotator: Annotator, rng: random.Random | None = None,
              now: float | None = None) -> dict | None:
    """Lease the next task to ``annotator`` → the task as shown to them, or None (queue empty)."""
    rng = rng or random.SystemRandom()
    now = time.time() if now is None else now
    with store.transaction() as conn:
        settings = store.settings(conn)
        expires = now + settings.lease_seconds
        own = conn.execute(select(assignments.c.id, assignments.c.task_id,
                                  assignments.c.shown_order)
                           .where(assignments.c.annotator_id == annotator.id,
                                  assignments.c.state == "leased")
                           .order_by(assignments.c.id).limit(1)).first()
        if own is not None:  # their own open lease (even expired): renew it, same order
            conn.execute(update(assignments).where(assignments.c.id == own.id)
                         .values(expires_at=expires))
            view = _task_view(conn, own.task_id, own.shown_order)
        else:
            query = _queue_query(annotator.id, settings.overlap, settings.order, now).limit(1)
            if not store.is_sqlite:  # concurrent pickers skip a task another one is taking
                query = query.with_for_update(of=tasks, skip_locked=True)
            task_id = conn.execute(query).scalar()
            if task_id is None:
                return None
            ids = list(conn.execute(select(candidates.c.id).where(candidates.c.task_id == task_id)
                                    .order_by(candidates.c.slot)).scalars())
            rng.shuffle(ids)  # the order shown to this annotator, stored with the lease
            conn.execute(insert(assignments).values(
                task_id=task_id, annotator_id=annotator.id, state="leased", shown_order=ids,
                leased_at=now, expires_at=expires))
            view = _task_view(conn, task_id, ids)
        view["done"] = done_count(conn, annotator.id)
        view["queue"] = queue_size(conn, annotator.id, settings.overlap, now)
    return view


def check_judgment(ranks, flags, comment: str, k: int) -> None:
    """Ranks aligned with the K candidates shown, 1 = best, equal = tie; flags ⊆ FLAGS."""
    if len(ranks) != k:
        raise QueueError(422, f"ranks: expected {k} ranks (one per candidate as shown), got "
                              f"{len(ranks)}")
    if any(not 1 <= r <= k for r in ranks):
        raise QueueError(422, f"ranks: expected integers 1..{k} (1 = best), got {list(ranks)}")
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise QueueError(422, f"flags: unknown {unknown}; allowed {list(FLAGS)}")
    if len(comment) > MAX_COMMENT:
        raise QueueError(422, f"comment: at most {MAX_COMMENT} characters")


def submit(store: Store, annotator: Annotator, task_id: int, ranks: list[int],
           flags: list[str] = (), comment: str = "", seconds: float | None = None,
           now: float | None = None) -> tuple[int, bool]:
    """Store one judgment → (judgment id, created). ``created`` False: it was already there."""
    now = time.time() if now is None else now
    try:
        with store.transaction() as conn:
            lease = conn.execute(select(assignments.c.id, assignments.c.state,
                                        assignments.c.shown_order, assignments.c.leased_at)
                                 .where(assignments.c.task_id == task_id,
                                        assignments.c.annotator_id == annotator.id)).first()
            if lease is None:
                raise QueueError(409, f"task {task_id} is not leased to you: open it with "
                                      "GET /api/tasks/next first")
            if lease.state == "done":
                return _existing(conn, task_id, annotator.id), False
            if lease.state == "skipped":
                raise QueueError(409, f"task {task_id} was skipped")
            check_judgment(ranks, flags, comment, len(lease.shown_order))
            slot_of = dict(conn.execute(select(candidates.c.id, candidates.c.slot)
                                        .where(candidates.c.task_id == task_id)).all())
            canonical = [0] * len(ranks)  # ranks in slot order (as imported)
            for cid, rank in zip(lease.shown_order, ranks):
                canonical[slot_of[cid]] = int(rank)
            judgment_id = conn.execute(insert(judgments).values(
                task_id=task_id, annotator_id=annotator.id, ranks=canonical,
                shown_order=lease.shown_order, flags=sorted(set(flags)), comment=comment,
                leased_at=lease.leased_at, submitted_at=now, seconds=seconds,
                server_seconds=max(now - lease.leased_at, 0.0))).inserted_primary_key[0]
            conn.execute(update(assignments).where(assignments.c.id == lease.id)
                         .values(state="done"))
        return judgment_id, True
    except IntegrityError:  # a concurrent identical POST committed first
        with store.engine.connect() as conn:
            return _existing(conn, task_id, annotator.id), False


def _existing(conn, task_id: int, annotator_id: int) -> int:
    return conn.execute(select(judgments.c.id).where(judgments.c.task_id == task_id,
                                                     judgments.c.annotator_id == annotator_id)
                        ).scalar()


def skip(store: Store, annotator: Annotator, task_id: int) -> None:
    """Release a leased task; it is not offered to this annotator again."""
    with store.transaction() as conn:
        changed = conn.execute(update(assignments).where(
            assignments.c.task_id == task_id, assignments.c.annotator_id == annotator.id,
            assignments.c.state == "leased").values(state="skipped")).rowcount
    if not changed:
        raise QueueError(409, f"task {task_id} is not leased to you")

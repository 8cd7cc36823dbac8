"""Assignment: who judges what, leases, and the one-transaction submit.

- A task goes to ``overlap`` annotators, never twice to the same one (unique (task,
  annotator) on assignments and on judgments). Its slots are taken by judgments and by leases
  not yet expired; a task with ``overlap`` judgments (``tasks.judged``, kept by submit)
  leaves the queue. An annotator's queue: tasks not complete never assigned to them.
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

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, update
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


# Statements are built once (SQLAlchemy then reuses their compiled form): a pick is hot.
_ME, _NOW, _OVERLAP, _TASK = (bindparam(n) for n in ("me", "now", "overlap", "task"))
# slots a task has taken: judgments and leases not yet expired
_TAKEN = (select(func.count()).where(
    assignments.c.task_id == tasks.c.id,
    or_(assignments.c.state == "done",
        and_(assignments.c.state == "leased", assignments.c.expires_at > _NOW)))
    .correlate(tasks).scalar_subquery())
_MINE = exists().where(assignments.c.task_id == tasks.c.id, assignments.c.annotator_id == _ME)
_ORDER_KEYS = {"fifo": [tasks.c.id],
               "random": [tasks.c.random_key, tasks.c.id],
               "uncertainty": [tasks.c.score_gap.is_(None), tasks.c.score_gap, tasks.c.id]}
# the next task: not complete, never assigned to this annotator, a slot free
PICK = {order: select(tasks.c.id).where(tasks.c.judged < _OVERLAP, ~_MINE, _TAKEN < _OVERLAP)
        .order_by(*keys).limit(1) for order, keys in _ORDER_KEYS.items()}
# PostgreSQL: concurrent pickers skip a task row another transaction is taking
PICK_LOCKED = {order: query.with_for_update(of=tasks, skip_locked=True)
               for order, query in PICK.items()}
# the queue an annotator sees: tasks not complete that were never assigned to them
QUEUE_SIZE = select(func.count()).select_from(tasks).where(tasks.c.judged < _OVERLAP, ~_MINE)
DONE = select(func.count()).select_from(judgments).where(judgments.c.annotator_id == _ME)
PROGRESS = select(DONE.scalar_subquery(), QUEUE_SIZE.scalar_subquery())
OWN_LEASE = (select(assignments.c.id, assignments.c.task_id, assignments.c.shown_order)
             .where(assignments.c.annotator_id == _ME, assignments.c.state == "leased")
             .order_by(assignments.c.id).limit(1))
# a task's prompt and candidates in one query
VIEW = (select(candidates.c.id, candidates.c.text, prompts.c.text)
        .join(tasks, tasks.c.id == candidates.c.task_id)
        .join(prompts, prompts.c.id == tasks.c.prompt_id)
        .where(candidates.c.task_id == _TASK).order_by(candidates.c.slot))
LEASE = select(assignments.c.id, assignments.c.state, assignments.c.shown_order,
               assignments.c.leased_at).where(assignments.c.task_id == _TASK,
                                              assignments.c.annotator_id == _ME)
EXISTING = select(judgments.c.id).where(judgments.c.task_id == _TASK,
                                        judgments.c.annotator_id == _ME)
BY_TOKEN = select(annotators.c.id, annotators.c.name, annotators.c.active).where(
    annotators.c.token_hash == bindparam("token_hash"))


def annotator_by_token_hash(store: Store, token_hash: str) -> Annotator | None:
    with store.engine.connect() as conn:  # a read: no write lock needed
        row = conn.execute(BY_TOKEN, {"token_hash": token_hash}).first()
    return Annotator(*row) if row else None


def queue_size(conn, annotator_id: int, overlap: int) -> int:
    return conn.execute(QUEUE_SIZE, {"me": annotator_id, "overlap": overlap}).scalar()


def done_count(conn, annotator_id: int) -> int:
    return conn.execute(DONE, {"me": annotator_id}).scalar()


def _view(conn, task_id: int) -> tuple[str, dict]:
    """(prompt, {candidate id: text}) of a task, in slot order."""
    rows = conn.execute(VIEW, {"task": task_id}).all()
    return rows[0][2], {cid: text for cid, text, _ in rows}


def next_task(store: Store, annotator: Annotator, rng: random.Random | None = None,
              now: float | None = None) -> dict | None:
    """Lease the next task to ``annotator`` → the task as shown to them, or None (queue empty)."""
    rng = rng or random.SystemRandom()
    now = time.time() if now is None else now
    with store.transaction() as conn:
        settings = store.settings(conn)
        expires = now + settings.lease_seconds
        own = conn.execute(OWN_LEASE, {"me": annotator.id}).first()
        if own is not None:  # their own open lease (even expired): renew it, same order
            conn.execute(update(assignments).where(assignments.c.id == own.id)
                         .values(expires_at=expires))
            task_id, ids = own.task_id, own.shown_order
            prompt, texts = _view(conn, task_id)
        else:
            pick = (PICK if store.is_sqlite else PICK_LOCKED)[settings.order]
            task_id = conn.execute(pick, {"me": annotator.id, "now": now,
                                          "overlap": settings.overlap}).scalar()
            if task_id is None:
                return None
            prompt, texts = _view(conn, task_id)
            ids = list(texts)
            rng.shuffle(ids)  # the order shown to this annotator, stored with the lease
            conn.execute(insert(assignments).values(
                task_id=task_id, annotator_id=annotator.id, state="leased", shown_order=ids,
                leased_at=now, expires_at=expires))
        done, size = conn.execute(PROGRESS, {"me": annotator.id,
                                             "overlap": settings.overlap}).one()
    return {"task_id": task_id, "prompt": prompt,
            "candidates": [{"id": cid, "text": texts[cid]} for cid in ids],
            "done": done, "queue": size}


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
            lease = conn.execute(LEASE, {"task": task_id, "me": annotator.id}).first()
            if lease is None:
                raise QueueError(409, f"task {task_id} is not leased to you: open it with "
                                      "GET /api/tasks/next first")
            if lease.state == "done":
                return _existing(conn, task_id, annotator.id), False
            if lease.state == "skipped":
                raise QueueError(409, f"task {task_id} was skipped")
            check_judgment(ranks, flags, comment, len(lease.shown_order))
            # ranks in slot order: add_task inserts a task's candidates in slot order, so
            # their ids ascend with the slot
            rank_of = dict(zip(lease.shown_order, ranks))
            canonical = [int(rank_of[cid]) for cid in sorted(lease.shown_order)]
            judgment_id = conn.execute(insert(judgments).values(
                task_id=task_id, annotator_id=annotator.id, ranks=canonical,
                shown_order=lease.shown_order, flags=sorted(set(flags)), comment=comment,
                leased_at=lease.leased_at, submitted_at=now, seconds=seconds,
                server_seconds=max(now - lease.leased_at, 0.0))).inserted_primary_key[0]
            conn.execute(update(assignments).where(assignments.c.id == lease.id)
                         .values(state="done"))
            conn.execute(update(tasks).where(tasks.c.id == task_id)
                         .values(judged=tasks.c.judged + 1))
        return judgment_id, True
    except IntegrityError:  # a concurrent identical POST committed first
        with store.engine.connect() as conn:
            return _existing(conn, task_id, annotator.id), False


def _existing(conn, task_id: int, annotator_id: int) -> int:
    return conn.execute(EXISTING, {"task": task_id, "me": annotator_id}).scalar()


def skip(store: Store, annotator: Annotator, task_id: int) -> None:
    """Release a leased task; it is not offered to this annotator again."""
    with store.transaction() as conn:
        changed = conn.execute(update(assignments).where(
            assignments.c.task_id == task_id, assignments.c.annotator_id == annotator.id,
            assignments.c.state == "leased").values(state="skipped")).rowcount
    if not changed:
        raise QueueError(409, f"task {task_id} is not leased to you")

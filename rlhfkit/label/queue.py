"""Assignment: who judges what, leases, and the one-transaction submit.

- A task goes to ``overlap`` annotators (``tasks.overlap``, the setting), never twice to the
  same one (unique (task, annotator) on assignments and on judgments). Its slots are taken by
  judgments and by leases not yet expired; a task with ``overlap`` judgments
  (``tasks.judged``) leaves the queue: the judgment's INSERT counts it and clears
  ``tasks.open`` (schema.COUNT_JUDGMENT). An annotator's queue: open tasks never assigned to
  them.
- Opening a task leases it for ``lease_seconds``; an annotator who comes back gets their own
  open lease again (same shown order). An expired lease frees its slot for someone else.
- Order: ``fifo`` (import order), ``random`` (a random key drawn at import), ``uncertainty``
  (smallest gap between the reward-model scores of a task's candidates first; unscored last).
- Submit is atomic: the judgment row and the assignment's state together, in a transaction
  it may share with other submits and leases (SQLite: ``Store.write``, group commit); the
  judgment's INSERT counts it on its task and its annotator (triggers: schema.TRIGGERS); a
  second identical POST finds the judgment and returns it (idempotent), the unique
  constraint settles a race between two such POSTs.
- Cost (the bench, docs/label.md): a judgment is two writes of two statements each (SQLite:
  each committed with the others that queued meanwhile). Opening a task is one query (their
  own lease or the pick, the task's text and the progress counts: the queue size from
  schema.queue_counts, not a count of the open tasks, and ``done`` from annotators.judged,
  not a count of their judgments) and the lease's INSERT; submit closes the lease with
  UPDATE … RETURNING and inserts the judgment, whose triggers count it (the task's count and
  open flag, the annotator's count, queue_counts when it completes the task). The pick reads
  an index led by ``open`` (schema.TASK_INDEXES), so it starts at the first open task in the
  queue's order: its cost does not grow with the tasks completed before it.
Tests: tests/label/test_queue.py.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from sqlalchemy import (
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from rlhfkit.label.schema import (
    annotators,
    assignments,
    candidates,
    judgments,
    prompts,
    queue_counts,
    tasks,
)
from rlhfkit.label.store import FLAGS, Store

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


# Statements are built once (SQLAlchemy then reuses their compiled form).
_ME, _NOW, _TASK = (bindparam(n) for n in ("me", "now", "task"))
# LIMIT 1 written into the SQL, not bound: with LIMIT $n PostgreSQL never settled on one plan
# for the prepared task-opening query and planned it again at every execution
_ONE = literal(1, literal_execute=True)
# not complete: ``= true`` (not ``IS true``), the form an index on (open, …) serves
_OPEN = tasks.c.open == true()
# A task's slots as this annotator sees them, in one probe of its assignments: each judgment
# and each lease not yet expired takes one; any assignment of their own (done, leased,
# skipped) counts ``overlap``, which bars the task (never twice to one annotator).
_SLOTS = (select(func.coalesce(func.sum(case(
    (assignments.c.annotator_id == _ME, tasks.c.overlap),
    (assignments.c.state == "done", 1),
    (and_(assignments.c.state == "leased", assignments.c.expires_at > _NOW), 1),
    else_=0)), 0)).where(assignments.c.task_id == tasks.c.id)
    .correlate(tasks).scalar_subquery())
_ORDER_KEYS = {"fifo": [tasks.c.id],
               "random": [tasks.c.random_key, tasks.c.id],
               "uncertainty": [tasks.c.score_gap.is_(None), tasks.c.score_gap, tasks.c.id]}
# the next task: open, never assigned to this annotator, a slot free; each order is one of
# schema.TASK_INDEXES after ``open``, so the pick walks only open tasks (those leased to others
# at the head of the queue, and with overlap > 1 those this annotator has judged)
PICK = {order: select(tasks.c.id).where(_OPEN, _SLOTS < tasks.c.overlap)
        .order_by(*keys).limit(_ONE) for order, keys in _ORDER_KEYS.items()}
# PostgreSQL: concurrent pickers skip a task row another transaction is taking
PICK_LOCKED = {order: query.with_for_update(of=tasks, skip_locked=True)
               for order, query in PICK.items()}
# The queue an annotator sees: open tasks never assigned to them = open tasks − open tasks
# assigned to them (assignments hold one row per task and annotator): the open tasks from
# schema.queue_counts (a sum of 33 rows: counting the tasks grew with the open tasks, 0.4 ms at
# 2,500 open on PostgreSQL), then this annotator's assignments from the first open task on
# (schema.ASSIGNMENTS_BY_TASK; no task before it is open), each task looked up by its key. In
# fifo order those are the few they hold at the head of the queue, not all they ever judged.
# As a join PostgreSQL hashed the whole table a second time.
_OPEN_TASKS = select(func.sum(queue_counts.c.open_tasks)).correlate(None)
_FIRST_OPEN = (select(tasks.c.id).where(_OPEN).order_by(tasks.c.id).limit(_ONE)
               .correlate(None).scalar_subquery())
_TASK_OPEN = (select(tasks.c.open).where(tasks.c.id == assignments.c.task_id)
              .correlate(assignments).scalar_subquery())
_OPEN_MINE = (select(func.count()).select_from(assignments)
              .where(assignments.c.annotator_id == _ME, assignments.c.task_id >= _FIRST_OPEN,
                     _TASK_OPEN == true()).correlate(None))
QUEUE_SIZE = select(_OPEN_TASKS.scalar_subquery() - _OPEN_MINE.scalar_subquery())
# their judgments, as the trigger schema.COUNT_JUDGMENT counts them
DONE = select(annotators.c.judged).where(annotators.c.id == _ME)
# their own open lease (even expired), if any: its task comes back before any other
_OWN_TASK = (select(assignments.c.task_id)
             .where(assignments.c.annotator_id == _ME, assignments.c.state == "leased")
             .order_by(assignments.c.id).limit(_ONE))
_OWN = assignments.alias("own")


def _view(task_id):
    """A task's candidates (slot order) with its prompt, the annotator's progress (done, queue)
    and their lease of it if it is open (id, shown order) in one query; ``task_id`` a value or
    the pick as a subquery."""
    return (select(tasks.c.id, candidates.c.id, candidates.c.text, prompts.c.text,
                   DONE.correlate(None).scalar_subquery(), QUEUE_SIZE.scalar_subquery(),
                   _OWN.c.id, _OWN.c.shown_order)
            .select_from(candidates.join(tasks, tasks.c.id == candidates.c.task_id)
                         .join(prompts, prompts.c.id == tasks.c.prompt_id)
                         .outerjoin(_OWN, and_(_OWN.c.task_id == tasks.c.id,
                                               _OWN.c.annotator_id == _ME,
                                               _OWN.c.state == "leased")))
            .where(candidates.c.task_id == task_id).order_by(candidates.c.slot))


def _own_or_pick(pick):
    """The task of their own open lease, else the pick (an uncorrelated subquery each: both
    run at most once)."""
    return func.coalesce(_OWN_TASK.correlate(None).scalar_subquery(),
                         pick.correlate(None).scalar_subquery())


# the next task (their own open lease, else the pick), its view and the progress: one query
NEXT = {order: _view(_own_or_pick(query)) for order, query in PICK.items()}
NEXT_LOCKED = {order: _view(_own_or_pick(query)) for order, query in PICK_LOCKED.items()}
LEASE_TASK = insert(assignments)
RENEW = (update(assignments).where(assignments.c.id == bindparam("lease"))
         .values(expires_at=bindparam("expires")))
# submit: the lease closes and hands back what the judgment needs, or changes nothing (then
# LEASE says why: done already, skipped, never leased)
CLOSE_LEASE = (update(assignments)
               .where(assignments.c.task_id == _TASK, assignments.c.annotator_id == _ME,
                      assignments.c.state == "leased")
               .values(state="done")
               .returning(assignments.c.shown_order, assignments.c.leased_at))
LEASE = select(assignments.c.state).where(assignments.c.task_id == _TASK,
                                          assignments.c.annotator_id == _ME)
# counted on its task, its annotator and queue_counts by the database (schema.TRIGGERS)
ADD_JUDGMENT = insert(judgments)
EXISTING = select(judgments.c.id).where(judgments.c.task_id == _TASK,
                                        judgments.c.annotator_id == _ME)
BY_TOKEN = select(annotators.c.id, annotators.c.name, annotators.c.active).where(
    annotators.c.token_hash == bindparam("token_hash"))


def annotator_by_token_hash(store: Store, token_hash: str) -> Annotator | None:
    with store.engine.connect() as conn:  # a read: no write lock needed
        row = conn.execute(BY_TOKEN, {"token_hash": token_hash}).first()
    return Annotator(*row) if row else None


def queue_size(conn, annotator_id: int) -> int:
    """Open tasks never assigned to ``annotator_id`` (each task carries its own overlap and
    ``open`` flag, schema 3)."""
    return conn.execute(QUEUE_SIZE, {"me": annotator_id}).scalar()


def done_count(conn, annotator_id: int) -> int:
    return conn.execute(DONE, {"me": annotator_id}).scalar()


def next_task(store: Store, annotator: Annotator, rng: random.Random | None = None,
              now: float | None = None) -> dict | None:
    """Lease the next task to ``annotator`` → the task as shown to them, or None (queue empty)."""
    rng = rng or random.SystemRandom()
    now = time.time() if now is None else now

    def lease(conn):
        settings = store.settings(conn)
        expires = now + settings.lease_seconds
        rows = conn.execute((NEXT if store.is_sqlite else NEXT_LOCKED)[settings.order],
                            {"me": annotator.id, "now": now}).all()
        if not rows:
            return None
        task_id, _, _, prompt, done, size, own, ids = rows[0]
        if own is not None:  # their own open lease (even expired): renew it, same order
            conn.execute(RENEW, {"lease": own, "expires": expires})
        else:
            ids = [row[1] for row in rows]
            rng.shuffle(ids)  # the order shown to this annotator, stored with the lease
            conn.execute(LEASE_TASK, {"task_id": task_id, "annotator_id": annotator.id,
                                      "state": "leased", "shown_order": ids, "leased_at": now,
                                      "expires_at": expires})
            size -= 1  # counted before this lease: the task was in the queue
        return rows, task_id, prompt, done, size, ids

    leased = store.write(lease)  # returns once the lease is durable (group commit)
    if leased is None:
        return None
    rows, task_id, prompt, done, size, ids = leased
    texts = {row[1]: row[2] for row in rows}
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
    key = {"task": task_id, "me": annotator.id}

    def store_judgment(conn) -> tuple[int, bool]:
        lease = conn.execute(CLOSE_LEASE, key).first()
        if lease is None:
            state = conn.execute(LEASE, key).scalar()
            if state == "done":
                return _existing(conn, task_id, annotator.id), False
            if state == "skipped":
                raise QueueError(409, f"task {task_id} was skipped")
            raise QueueError(409, f"task {task_id} is not leased to you: open it with "
                                  "GET /api/tasks/next first")
        # a refused judgment raises here: its writes roll back, the lease stays open
        check_judgment(ranks, flags, comment, len(lease.shown_order))
        # ranks in slot order: add_task inserts a task's candidates in slot order, so their
        # ids ascend with the slot
        rank_of = dict(zip(lease.shown_order, ranks))
        canonical = [int(rank_of[cid]) for cid in sorted(lease.shown_order)]
        judgment_id = conn.execute(ADD_JUDGMENT, {
            "task_id": task_id, "annotator_id": annotator.id, "ranks": canonical,
            "shown_order": lease.shown_order, "flags": sorted(set(flags)),
            "comment": comment, "leased_at": lease.leased_at, "submitted_at": now,
            "seconds": seconds, "server_seconds": max(now - lease.leased_at, 0.0),
        }).inserted_primary_key[0]
        return judgment_id, True

    try:
        return store.write(store_judgment)  # returns once the judgment is durable
    except IntegrityError:  # a concurrent identical POST committed first
        with store.engine.connect() as conn:
            return _existing(conn, task_id, annotator.id), False


def _existing(conn, task_id: int, annotator_id: int) -> int:
    return conn.execute(EXISTING, {"task": task_id, "me": annotator_id}).scalar()


def skip(store: Store, annotator: Annotator, task_id: int) -> None:
    """Release a leased task; it is not offered to this annotator again."""
    changed = store.write(lambda conn: conn.execute(update(assignments).where(
        assignments.c.task_id == task_id, assignments.c.annotator_id == annotator.id,
        assignments.c.state == "leased").values(state="skipped")).rowcount)
    if not changed:
        raise QueueError(409, f"task {task_id} is not leased to you")

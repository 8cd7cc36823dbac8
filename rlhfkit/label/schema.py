"""The label store's tables: SQLAlchemy Core ``Table``s on one ``MetaData``, and the schema
version a store records (``meta.schema_version``).

Tables: meta (schema version, settings, admin token hash), prompts, tasks, candidates (text,
model, sampling settings, reward-model score), annotators (token hashed), assignments (a
lease per task and annotator with the order shown), judgments (ranks, flags, comment, shown
order, timestamps, seconds), queue_counts (the open tasks, in a few rows). Times are unix
seconds (float). Also what the store's runtime and its migrations both use: the queue
settings as meta holds them (``Settings``, ``READ_SETTINGS``, ``parse_settings``) and the
statements that fill queue_counts (``add_count_rows``, ``RECOUNT``). Creating and opening a
store: store.py (``init_store``, ``open_store``); migrating one: migrations.py; the queries on
these tables: queue.py, export.py.
Tests: tests/label/test_store.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    func,
    insert,
    select,
    update,
)

# 2: tasks.tag (issue #14); 3: tasks.overlap and tasks.open (the pick's index); 4: queue_counts
# (the open tasks, counted as they change); 5: annotators.judged and the triggers (below) that
# count a judgment
SCHEMA_VERSION = 5

metadata = MetaData()

meta = Table("meta", metadata,
             Column("key", String(64), primary_key=True),
             Column("value", Text, nullable=False))

DEFAULT_LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class Settings:
    """The queue settings: JSON in meta's "settings" row (a key missing there has its default
    here). Checked and changed by store.py (``check_settings``, ``update_settings``)."""
    overlap: int = 1  # annotators per task
    order: str = "fifo"
    lease_seconds: float = DEFAULT_LEASE_SECONDS


READ_SETTINGS = select(meta.c.value).where(meta.c.key == "settings")


def parse_settings(stored: str | None) -> Settings:
    """meta's "settings" value (``READ_SETTINGS``; None: no row) → Settings."""
    return Settings(**json.loads(stored or "{}"))


prompts = Table("prompts", metadata,
                Column("id", Integer, primary_key=True),
                Column("text", Text, nullable=False),
                Column("messages", JSON, nullable=False),  # [[role, content], ...]
                Column("created_at", Float, nullable=False))

tasks = Table("tasks", metadata,
              Column("id", Integer, primary_key=True),
              Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
              Column("random_key", Float, nullable=False),  # order=random
              Column("score_gap", Float),  # order=uncertainty: smallest RM score gap (null: unscored)
              # judgments so far, counted by the database as each is stored (COUNT_JUDGMENT,
              # below), so picking a task never counts them
              Column("judged", Integer, nullable=False, default=0),
              Column("created_at", Float, nullable=False),
              # the batch a task belongs to, e.g. "round-0/sample", "round-1/compare" (the
              # iterated loop, rlhfkit/loop/); null for tasks added without one
              Column("tag", String(100), index=True),
              # annotators this task goes to: the `overlap` setting, copied by add_task and by
              # update_settings, so that ``open`` is a function of the task's own row
              Column("overlap", Integer, nullable=False),
              # judged < overlap, kept with ``judged`` (COUNT_JUDGMENT) and by update_settings:
              # the pick and the queue size read open tasks from an index range (below)
              # instead of walking the completed ones
              Column("open", Boolean, nullable=False))
# one index per queue order, each led by ``open``: a pick starts at the first open task in
# that order and the queue size counts one range (queue.py: PICK, QUEUE_SIZE)
TASK_INDEXES = (
    Index("ix_tasks_open_fifo", tasks.c.open, tasks.c.id),
    Index("ix_tasks_open_random", tasks.c.open, tasks.c.random_key, tasks.c.id),
    # unscored (null gap) last on both databases: SQLite sorts nulls first, PostgreSQL last
    Index("ix_tasks_open_uncertainty", tasks.c.open, tasks.c.score_gap.is_(None),
          tasks.c.score_gap, tasks.c.id),
)

# The open tasks, counted where ``open`` changes (add_task, the judgment that completes a task,
# update_settings): an annotator's queue size reads these few rows instead of counting the open
# tasks (queue.py: QUEUE_SIZE; the updates: store.py's COUNT_ADDED, and RECOUNT and
# COUNT_COMPLETED below). The count is the sum of the rows. Row 0 is add_task's; a completed
# task is taken off row 1 + task id % QUEUE_SHARDS, so that two submits seldom wait for one row
# and an import (which holds row 0 until it commits) never blocks a submit.
queue_counts = Table("queue_counts", metadata,
                     Column("shard", Integer, primary_key=True, autoincrement=False),
                     Column("open_tasks", Integer, nullable=False))
QUEUE_SHARDS = 32  # a power of two (COUNT_COMPLETED)
ADDED_SHARD = 0
# every row afresh from the tasks (update_settings, the 3 → 4 migration): the count on row 0
RECOUNT = update(queue_counts).values(open_tasks=case(
    (queue_counts.c.shard == ADDED_SHARD,
     select(func.count()).select_from(tasks).where(tasks.c.open).scalar_subquery()),
    else_=0))


def add_count_rows(conn) -> None:
    """queue_counts' rows, all 0 (then RECOUNT where there are tasks): init_store, the 3 → 4
    migration."""
    conn.execute(insert(queue_counts), [{"shard": shard, "open_tasks": 0}
                                        for shard in range(QUEUE_SHARDS + 1)])

candidates = Table("candidates", metadata,
                   Column("id", Integer, primary_key=True),
                   Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False, index=True),
                   Column("slot", Integer, nullable=False),  # canonical order within the task
                   Column("text", Text, nullable=False),
                   Column("model", Text, nullable=False),  # model/checkpoint that wrote it
                   Column("settings", JSON, nullable=False),  # sampling settings ({} if imported)
                   Column("rm_score", Float),
                   UniqueConstraint("task_id", "slot"))

annotators = Table("annotators", metadata,
                   Column("id", Integer, primary_key=True),
                   Column("name", String(100), nullable=False, unique=True),
                   Column("token_hash", String(64), nullable=False, unique=True),
                   Column("active", Boolean, nullable=False),
                   Column("created_at", Float, nullable=False),
                   # their judgments, counted as each is stored (COUNT_JUDGMENT): the page's
                   # "done" reads it instead of counting them (schema 5)
                   Column("judged", Integer, nullable=False, default=0))

assignments = Table("assignments", metadata,
                    Column("id", Integer, primary_key=True),
                    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
                    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
                    Column("state", String(8), nullable=False),  # leased | done | skipped
                    Column("shown_order", JSON, nullable=False),  # candidate ids as shown
                    Column("leased_at", Float, nullable=False),
                    Column("expires_at", Float, nullable=False),
                    UniqueConstraint("task_id", "annotator_id"),
                    Index("ix_assignments_state", "task_id", "state", "expires_at"),
                    # an annotator's own lease (queue.py: _OWN_TASK)
                    Index("ix_assignments_annotator", "annotator_id", "state"))
# an annotator's assignments from a task id on (queue.py: QUEUE_SIZE, schema 4)
ASSIGNMENTS_BY_TASK = Index("ix_assignments_annotator_task", assignments.c.annotator_id,
                            assignments.c.task_id)

judgments = Table("judgments", metadata,
                  Column("id", Integer, primary_key=True),
                  Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
                  Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
                  Column("ranks", JSON, nullable=False),  # canonical slot order, 1 = best
                  Column("shown_order", JSON, nullable=False),  # candidate ids as shown
                  Column("flags", JSON, nullable=False),
                  Column("comment", Text, nullable=False),
                  Column("leased_at", Float, nullable=False),
                  Column("submitted_at", Float, nullable=False),
                  Column("seconds", Float),  # measured by the page (null if it sent none)
                  Column("server_seconds", Float, nullable=False),  # lease → submit
                  UniqueConstraint("task_id", "annotator_id"),
                  Index("ix_judgments_annotator", "annotator_id"))


# ----------------------------------------------------------------------------- triggers
# What a stored judgment changes besides its own row, done by the database in the INSERT's
# statement: the task's count and open flag, the annotator's count, and, when that closes the
# task, queue_counts. As statements of the server's they were two of the ten round trips of a
# judgment on PostgreSQL (BEGIN and COMMIT included; docs/label.md, schema 5), and the
# annotator's count was a count of their judgments. One body for both databases (SET sees the
# row as it was: judged + 1 is the new count); a judgment past the overlap finds the task
# closed already and takes nothing off. update_settings' overlap change fires COUNT_COMPLETED
# too, then recounts. The shard is 1 + id % QUEUE_SHARDS, written id & (QUEUE_SHARDS − 1): a
# ``%`` in DDL text would need escaping for psycopg and not for SQLite.
# Tests: tests/label/test_store.py (the counts against counts of the rows, migrations).
COUNT_JUDGMENT = ("UPDATE tasks SET judged = judged + 1, open = judged + 1 < overlap"
                  " WHERE id = NEW.task_id;"
                  " UPDATE annotators SET judged = judged + 1 WHERE id = NEW.annotator_id;")
assert QUEUE_SHARDS & (QUEUE_SHARDS - 1) == 0
COUNT_COMPLETED = ("UPDATE queue_counts SET open_tasks = open_tasks - 1"
                   f" WHERE shard = 1 + (NEW.id & {QUEUE_SHARDS - 1});")
# name → (table, when it fires, the condition, the body)
TRIGGERS = {"count_judgment": ("judgments", "AFTER INSERT", None, COUNT_JUDGMENT),
            "count_completed": ("tasks", "AFTER UPDATE OF open", "OLD.open AND NOT NEW.open",
                                COUNT_COMPLETED)}


def create_triggers(conn) -> None:
    """TRIGGERS in the store of ``conn`` (init_store, the 4 → 5 migration): SQLite takes the
    body in the trigger, PostgreSQL in a PL/pgSQL function of the same name."""
    for name, (table, event, condition, body) in TRIGGERS.items():
        if conn.dialect.name == "sqlite":
            when = f" WHEN {condition}" if condition else ""
            conn.exec_driver_sql(f"CREATE TRIGGER {name} {event} ON {table} FOR EACH ROW"
                                 f"{when} BEGIN {body} END")
        else:
            conn.exec_driver_sql(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql"
                                 f" AS $$ BEGIN {body} RETURN NULL; END $$")
            when = f" WHEN ({condition})" if condition else ""
            conn.exec_driver_sql(f"CREATE TRIGGER {name} {event} ON {table} FOR EACH ROW"
                                 f"{when} EXECUTE FUNCTION {name}()")

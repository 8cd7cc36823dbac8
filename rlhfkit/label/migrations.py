"""The label store's schema migrations: a store of an older schema version is brought up to
schema.SCHEMA_VERSION when it is opened (store.open_store calls ``migrate``).

One step per version (``MIGRATIONS``), each a function of the connection of the one
transaction that migrates the store.
Tests: tests/label/test_migrations.py (a version 2, 3 and 4 store opened, then used).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import DDL, func, select, update

from rlhfkit.label.schema import (
    ASSIGNMENTS_BY_TASK,
    READ_SETTINGS,
    RECOUNT,
    TASK_INDEXES,
    add_count_rows,
    annotators,
    create_triggers,
    judgments,
    meta,
    parse_settings,
    queue_counts,
    tasks,
)

if TYPE_CHECKING:  # store.py imports this module (open_store → migrate)
    from rlhfkit.label.store import Store


def _add_overlap_and_open(conn) -> None:
    """2 → 3: tasks.overlap and tasks.open from the settings and the judgments so far, and the
    pick's indexes. The DEFAULTs only fill the existing rows (SQLite cannot add a NOT NULL
    column without one); add_task always sets both."""
    overlap = parse_settings(conn.execute(READ_SETTINGS).scalar()).overlap
    conn.execute(DDL("ALTER TABLE tasks ADD COLUMN overlap INTEGER NOT NULL DEFAULT 1"))
    conn.execute(DDL("ALTER TABLE tasks ADD COLUMN open BOOLEAN NOT NULL DEFAULT true"))
    conn.execute(update(tasks).values(overlap=overlap, open=tasks.c.judged < overlap))
    for index in TASK_INDEXES:
        index.create(conn)


def _add_queue_counts(conn) -> None:
    """3 → 4: the queue_counts table, counted from the tasks, and ASSIGNMENTS_BY_TASK."""
    queue_counts.create(conn)
    add_count_rows(conn)
    conn.execute(RECOUNT)
    ASSIGNMENTS_BY_TASK.create(conn)


def _add_judgment_counts(conn) -> None:
    """4 → 5: annotators.judged, counted from their judgments, and the triggers that count
    each judgment from now on (schema.TRIGGERS)."""
    conn.execute(DDL("ALTER TABLE annotators ADD COLUMN judged INTEGER NOT NULL DEFAULT 0"))
    conn.execute(update(annotators).values(judged=select(func.count()).select_from(judgments)
                                           .where(judgments.c.annotator_id == annotators.c.id)
                                           .scalar_subquery()))
    create_triggers(conn)


# schema version → (the next version, the step that brings a store there)
MIGRATIONS = {"2": ("3", _add_overlap_and_open), "3": ("4", _add_queue_counts),
              "4": ("5", _add_judgment_counts)}
_VERSION_LOCKED = (select(meta.c.value).where(meta.c.key == "schema_version")
                   .with_for_update())


def migrate(store: Store) -> None:
    """Bring a store to SCHEMA_VERSION in one transaction. The version is read again under a
    lock (SQLite: the write lock; PostgreSQL: FOR UPDATE on its row): of several processes
    opening an old store at once (`serve --workers N`), one migrates and the others then find
    the new version."""
    with store.transaction() as conn:
        version = conn.execute(_VERSION_LOCKED).scalar()
        while version in MIGRATIONS:
            version, step = MIGRATIONS[version]
            step(conn)
            store.set_meta(conn, "schema_version", version)

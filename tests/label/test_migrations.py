"""Schema migrations (rlhfkit/label/migrations.py) on SQLite and PostgreSQL: a version 2 store
(before tasks.overlap and tasks.open), a version 3 store (before queue_counts) and a version 4
store (before the triggers that count judgments) are migrated when opened and then work."""
from sqlalchemy import DDL, inspect, select, update

from rlhfkit.label import queue
from rlhfkit.label.schema import (
    ASSIGNMENTS_BY_TASK,
    SCHEMA_VERSION,
    TASK_INDEXES,
    TRIGGERS,
    meta,
    queue_counts,
)
from rlhfkit.label.store import Store, connect, init_store, open_store, update_settings


def trigger_names(conn) -> set[str]:
    query = ("SELECT name FROM sqlite_master WHERE type = 'trigger'"
             if conn.dialect.name == "sqlite" else
             "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    return set(conn.exec_driver_sql(query).scalars())


def to_version_4(store: Store) -> None:
    """What a store written by schema 4 holds: no triggers, no annotators.judged; the server
    counted each judgment itself (as these statements did)."""
    with store.transaction() as conn:
        for name, (table, *_) in TRIGGERS.items():
            conn.execute(DDL(f"DROP TRIGGER {name}" if conn.dialect.name == "sqlite" else
                             f"DROP TRIGGER {name} ON {table}"))
            if conn.dialect.name == "postgresql":
                conn.execute(DDL(f"DROP FUNCTION {name}()"))
        conn.execute(DDL("ALTER TABLE annotators DROP COLUMN judged"))
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="4"))


def to_version_3(store: Store) -> None:
    """What a store written by schema 3 holds: no queue_counts."""
    to_version_4(store)
    with store.transaction() as conn:
        queue_counts.drop(conn)
        ASSIGNMENTS_BY_TASK.drop(conn)
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="3"))


def to_version_2(store: Store) -> None:
    """What a store written by schema 2 holds: tasks without overlap, open and their indexes
    (SQLite ≥ 3.35 and PostgreSQL both drop a column)."""
    to_version_4(store)
    with store.transaction() as conn:
        queue_counts.drop(conn)
        ASSIGNMENTS_BY_TASK.drop(conn)
        for index in TASK_INDEXES:
            index.drop(conn)
        conn.execute(DDL("ALTER TABLE tasks DROP COLUMN open"))
        conn.execute(DDL("ALTER TABLE tasks DROP COLUMN overlap"))
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="2"))


def index_names(conn) -> set[str]:
    """The indexes on tasks, by name (SQLAlchemy's reflection skips SQLite's expression index)."""
    query = ("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'"
             if conn.dialect.name == "sqlite" else
             "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")
    return set(conn.exec_driver_sql(query).scalars())


def test_a_version_2_store_is_migrated_on_open_and_works(db, annotator, add_tasks, judge, flags,
                                                         open_counted):
    store, _ = init_store(db)
    update_settings(store, overlap=2)
    ids = add_tasks(store, 4, k=2)
    a, b = annotator(store, "a"), annotator(store, "b")
    judged_by_both = judge(store, a)
    assert judge(store, b) == judged_by_both == ids[0]
    judged_by_a = judge(store, a)
    to_version_2(store)
    store.close()
    engine = connect(db)  # the engine only: open_store would migrate
    assert {"open", "overlap"}.isdisjoint(c["name"] for c in inspect(engine).get_columns("tasks"))
    with engine.connect() as conn:
        assert {i.name for i in TASK_INDEXES}.isdisjoint(index_names(conn))
    engine.dispose()

    store = open_store(db)  # migrates
    with store.engine.connect() as conn:
        version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version"))
        assert version.scalar() == str(SCHEMA_VERSION) == "5"
        assert {i.name for i in TASK_INDEXES} <= index_names(conn)
    assert flags(store) == {ids[0]: (2, 2, False), judged_by_a: (1, 2, True),
                            ids[2]: (0, 2, True), ids[3]: (0, 2, True)}
    assert open_counted(store) == (3, 3)
    # the queue on the migrated store: b gets the task a judged, never the complete one
    with store.engine.connect() as conn:
        assert queue.queue_size(conn, a.id) == 2 and queue.queue_size(conn, b.id) == 3
    assert judge(store, b) == judged_by_a and flags(store)[judged_by_a] == (2, 2, False)
    assert open_counted(store) == (2, 2)
    store.close()
    open_store(db).close()  # a migrated store opens as it is


def test_a_version_3_store_gets_its_queue_counts_on_open(db, annotator, add_tasks, judge,
                                                         open_counted):
    store, _ = init_store(db)
    add_tasks(store, 5, k=2)
    a = annotator(store, "a")
    judge(store, a)
    to_version_3(store)
    store.close()
    engine = connect(db)
    assert "queue_counts" not in inspect(engine).get_table_names()
    engine.dispose()

    store = open_store(db)  # migrates
    assert open_counted(store) == (4, 4)
    with store.engine.connect() as conn:
        assert ASSIGNMENTS_BY_TASK.name in {i["name"] for i in
                                            inspect(conn).get_indexes("assignments")}
    with store.engine.connect() as conn:
        assert queue.queue_size(conn, a.id) == 4
    judge(store, a)
    assert open_counted(store) == (3, 3)
    store.close()


def test_a_version_4_store_gets_its_judgment_counts_on_open(db, annotator, add_tasks, judge,
                                                            flags, open_counted,
                                                            judged_counted):
    """4 → 5: annotators.judged counted from the judgments there, and the triggers: from then on
    a judgment counts itself on its task, its annotator and queue_counts."""
    store, _ = init_store(db)
    update_settings(store, overlap=2)
    ids = add_tasks(store, 4, k=2)
    a, b, c = (annotator(store, n) for n in "abc")
    judge(store, a), judge(store, a), judge(store, b)  # b judges a's first: complete
    to_version_4(store)
    store.close()
    engine = connect(db)
    assert "judged" not in {col["name"] for col in inspect(engine).get_columns("annotators")}
    with engine.connect() as conn:
        assert not trigger_names(conn) & set(TRIGGERS)
    engine.dispose()

    store = open_store(db)  # migrates
    with store.engine.connect() as conn:
        assert set(TRIGGERS) <= trigger_names(conn)
        assert [queue.done_count(conn, p.id) for p in (a, b, c)] == [2, 1, 0]
    assert judged_counted(store) == {"a": (2, 2), "b": (1, 1), "c": (0, 0)}
    assert judge(store, b) == ids[1]  # completes a's second
    assert judge(store, c) == ids[2]
    assert judged_counted(store) == {"a": (2, 2), "b": (2, 2), "c": (1, 1)}
    assert flags(store) == {ids[0]: (2, 2, False), ids[1]: (2, 2, False),
                            ids[2]: (1, 2, True), ids[3]: (0, 2, True)}
    assert open_counted(store) == (2, 2)
    store.close()

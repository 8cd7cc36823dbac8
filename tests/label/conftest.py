"""Fixtures of the label tests: a throwaway PostgreSQL cluster (initdb + pg_ctl, unix socket in a
temp dir, a free port) started once per session, and ``db``: a fresh, empty store location on
SQLite and on PostgreSQL (every store/API test runs on both).

Without PostgreSQL the PostgreSQL cases skip, except under CI=true, where they fail: CI
installs Debian's ``postgresql`` (scripts/install.sh) and must run them.
"""
import os
import random

import bench_label as live  # bench/label.py (tests/conftest.py: BenchModules)
import pytest
from sqlalchemy import func, select

from rlhfkit.label import queue
from rlhfkit.label.schema import annotators, judgments, queue_counts, tasks
from rlhfkit.label.store import (
    Store,
    add_annotator,
    add_task,
    count_added,
    hash_token,
    init_store,
)


@pytest.fixture(scope="session")
def postgres_server():
    """(socket dir, port) of a fresh cluster; stopped and removed at the end of the session."""
    problem = live.postgres_missing()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}: CI must run the PostgreSQL tests (scripts/install.sh "
                        "installs Debian's postgresql)")
        pytest.skip(problem)
    with live.throwaway_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """A --db value for a new, empty store (no tables yet)."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.sqlite")
    return live.new_postgres_db(request.getfixturevalue("postgres_server"))


@pytest.fixture
def annotator():
    """``annotator(store, name)`` → a new annotator of that name, as the queue sees them."""
    def make(store: Store, name: str) -> queue.Annotator:
        return queue.annotator_by_token_hash(store, hash_token(add_annotator(store, name)))

    return make


@pytest.fixture
def add_tasks():
    """``add_tasks(store, n, k=3)`` → the ids of n new tasks of k candidates each (prompt
    "prompt i", responses "ri.j"), in one transaction, counted once as an import does."""
    def add(store: Store, n: int, k: int = 3) -> list[int]:
        rng = random.Random(0)
        with store.transaction() as conn:
            ids = [add_task(conn, (("user", f"prompt {i}"),), [f"r{i}.{j}" for j in range(k)],
                            ["m"] * k, [{}] * k, rng, count=False) for i in range(n)]
            count_added(conn, n)
        return ids

    return add


@pytest.fixture
def store_and_admin(db):
    """(db, store, admin token) of an initialised store."""
    store, admin_token = init_store(db)
    yield db, store, admin_token
    store.close()


# What the store tests check after each change (tests/label/test_store.py, test_migrations.py)
@pytest.fixture
def judge():
    """``judge(store, person)`` → the id of the task ``person`` got next, ranked [1, 2]."""
    def judge_next(store: Store, person: queue.Annotator) -> int:
        task = queue.next_task(store, person)
        queue.submit(store, person, task["task_id"], [1, 2])
        return task["task_id"]

    return judge_next


@pytest.fixture
def flags():
    """``flags(store)`` → {task id: (judged, overlap, open)}."""
    def read(store: Store) -> dict[int, tuple[int, int, bool]]:
        with store.engine.connect() as conn:
            return {row[0]: tuple(row[1:]) for row in conn.execute(
                select(tasks.c.id, tasks.c.judged, tasks.c.overlap, tasks.c.open))}

    return read


@pytest.fixture
def open_counted():
    """``open_counted(store)`` → (open tasks as queue_counts sums them, open tasks counted)."""
    def read(store: Store) -> tuple[int, int]:
        with store.engine.connect() as conn:
            return (conn.execute(select(func.sum(queue_counts.c.open_tasks))).scalar(),
                    conn.execute(select(func.count()).select_from(tasks).where(tasks.c.open))
                    .scalar())

    return read


@pytest.fixture
def judged_counted():
    """``judged_counted(store)`` → {annotator name: (annotators.judged, their judgments
    counted)}."""
    def read(store: Store) -> dict[str, tuple[int, int]]:
        with store.engine.connect() as conn:
            return {name: (judged, conn.execute(select(func.count()).select_from(judgments)
                                                .where(judgments.c.annotator_id == id_))
                           .scalar())
                    for id_, name, judged in conn.execute(
                        select(annotators.c.id, annotators.c.name, annotators.c.judged))}

    return read

"""The store on SQLite and PostgreSQL: the open flag, the count of open tasks and the
annotators' counts follow judgments, imports and overlap changes; group commit; checkpoints.
Migrations: tests/label/test_migrations.py."""
import json
import random
import threading

import bench_label as live  # bench/label.py (tests/conftest.py: BenchModules)
from sqlalchemy import select, update

from rlhfkit.label import queue
from rlhfkit.label.sources import import_candidates
from rlhfkit.label.schema import meta, tasks
from rlhfkit.label.store import Store, add_task, init_store, update_settings


def test_the_open_flag_follows_judgments_and_overlap_changes(store_and_admin, annotator, add_tasks,
                                                             judge, flags):
    _, store, _ = store_and_admin
    ids = add_tasks(store, 3, k=2)
    a, b = annotator(store, "a"), annotator(store, "b")
    assert {t: f[2] for t, f in flags(store).items()} == dict.fromkeys(ids, True)
    first = judge(store, a)
    assert flags(store)[first] == (1, 1, False)
    update_settings(store, overlap=2)  # the judged task reopens for a second annotator
    assert flags(store) == {ids[0]: (1, 2, True), ids[1]: (0, 2, True), ids[2]: (0, 2, True)}
    assert judge(store, b) == first and flags(store)[first] == (2, 2, False)
    update_settings(store, overlap=1)
    assert flags(store) == {ids[0]: (2, 1, False), ids[1]: (0, 1, True), ids[2]: (0, 1, True)}
    with store.transaction() as conn:  # tasks added now get the current overlap
        add_task(conn, (("user", "late"),), ["a", "b"], ["m"] * 2, [{}] * 2, random.Random(1))
    assert {f[1] for f in flags(store).values()} == {1}


def test_the_open_count_follows_imports_judgments_and_overlap_changes(store_and_admin, tmp_path,
                                                                      annotator, add_tasks, judge,
                                                                      flags, open_counted,
                                                                      judged_counted):
    """queue_counts (the queue size's open tasks) against a count of the open tasks, after
    each change; a judgment past the overlap (a late one) takes nothing off."""
    _, store, _ = store_and_admin
    assert open_counted(store) == (0, 0)
    ids = add_tasks(store, 40, k=2)
    assert open_counted(store) == (40, 40)
    a, b, c = (annotator(store, n) for n in "abc")
    for _ in range(5):
        judge(store, a)
    assert open_counted(store) == (35, 35)
    update_settings(store, overlap=2)  # a's five reopen
    assert open_counted(store) == (40, 40)
    for _ in range(3):
        judge(store, b)
    assert open_counted(store) == (37, 37)
    update_settings(store, overlap=2)  # no change: no recount, the count stays
    assert open_counted(store) == (37, 37)
    update_settings(store, overlap=1)
    assert open_counted(store) == (35, 35)
    late = queue.next_task(store, c, now=0.0)["task_id"]  # a lease long expired
    assert queue.next_task(store, b)["task_id"] == late
    assert queue.submit(store, b, late, [1, 2])[1]  # completes it
    assert queue.submit(store, c, late, [2, 1])[1]  # past the overlap: the task was closed
    assert open_counted(store) == (34, 34)
    assert not queue.submit(store, c, late, [2, 1])[1]  # the same again: counted once
    assert judged_counted(store) == {"a": (5, 5), "b": (4, 4), "c": (1, 1)}
    assert flags(store)[late] == (2, 1, False)
    with store.engine.connect() as conn:
        assert [queue.queue_size(conn, p.id) for p in (a, b, c)] == [34, 34, 34]
    assert sorted(flags(store)) == ids
    with store.transaction() as conn:  # one task, counted by add_task itself
        add_task(conn, (("user", "one"),), ["x", "y"], ["m"] * 2, [{}] * 2, random.Random(1))
    assert open_counted(store) == (35, 35)
    rows = tmp_path / "rows.jsonl"  # an import: 2 tasks (a row with one distinct response: none)
    rows.write_text("".join(json.dumps({"prompt": p, "responses": r}) + "\n" for p, r in (
        ("p1", ["x", "y"]), ("p2", ["x", "x"]), ("p3", ["x", "y", "z"]))))
    assert import_candidates(store, str(rows)) == (2, 1)
    assert open_counted(store) == (37, 37)


def test_an_import_in_progress_does_not_hold_up_submits(postgres_server, annotator, add_tasks,
                                                        open_counted):
    """PostgreSQL (SQLite has one writer): an import holds only queue_counts' row 0 until it
    commits; a submit completing a task writes another row and does not wait for it."""
    store, _ = init_store(live.new_postgres_db(postgres_server))
    add_tasks(store, 2, k=2)
    a = annotator(store, "a")
    task = queue.next_task(store, a)
    done = threading.Event()
    with store.engine.connect() as importing, importing.begin():
        add_task(importing, (("user", "new"),), ["x", "y"], ["m"] * 2, [{}] * 2,
                 random.Random(2))
        worker = threading.Thread(target=lambda: (
            queue.submit(store, a, task["task_id"], [1, 2]), done.set()))
        worker.start()
        finished = done.wait(10)
    worker.join()
    assert finished, "the submit waited for the import to commit"
    assert open_counted(store) == (2, 2)
    store.close()


def test_tokens_never_start_with_a_dash(monkeypatch):
    """A token starting with '-' is read as an option on a command line (`--admin-token -X…`):
    new_token draws again."""
    import secrets

    from rlhfkit.label.store import new_token

    drawn = iter(["-starts-with-a-dash", "Abc_-def"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert new_token() == "Abc_-def"
    monkeypatch.undo()
    assert len(new_token()) == 32 and not any(new_token().startswith("-") for _ in range(500))


def test_group_commit_answers_after_one_shared_commit(tmp_path):
    """SQLite (one group at a time): writes queued while another group runs make one group, one
    COMMIT, and none returns before it. If one of a group raises, the group is rolled back and
    each runs alone: the failing one gets its exception and keeps nothing, the others are kept."""
    import threading

    from sqlalchemy import event, insert

    store, _ = init_store(str(tmp_path / "l.sqlite"))
    commits = []
    event.listen(store.engine, "commit", lambda conn: commits.append(1))
    results, errors = {}, {}

    def put(key, gate=None):
        def fn(conn):
            if gate is not None:  # hold the group (and the write lock) until the others queued
                gate[0].set()
                gate[1].wait(10)
            conn.execute(insert(meta).values(key=key, value="1"))
            if key.startswith("bad"):
                raise ValueError("refused after writing")
            return key
        return fn

    def call(key, fn):
        try:
            results[key] = store.write(fn)
        except ValueError as err:
            errors[key] = err

    def group_behind_a_held_one(keys):
        gate = threading.Event(), threading.Event()
        threads = [threading.Thread(target=call, args=(f"held-{keys[0]}", put(f"held-{keys[0]}",
                                                                           gate)))]
        threads[0].start()
        gate[0].wait(10)
        for key in keys:
            threads.append(threading.Thread(target=call, args=(key, put(key))))
            threads[-1].start()
        while len(store._queued) < len(keys):  # all waiting for the held group to commit
            threading.Event().wait(0.01)
        assert not set(keys) & set(results)
        gate[1].set()
        for thread in threads:
            thread.join(10)

    group_behind_a_held_one(["a", "b", "c"])
    assert results == {"held-a": "held-a", "a": "a", "b": "b", "c": "c"} and errors == {}
    assert len(commits) == 2  # the held group, then one commit for the three queued
    commits.clear()
    group_behind_a_held_one(["d", "bad", "e"])
    assert {"d", "e"} <= set(results) and list(errors) == ["bad"]
    assert len(commits) == 1 + 2  # the held group; the group of three failed: d, e alone
    with store.engine.connect() as conn:
        keys = set(conn.execute(select(meta.c.key)).scalars())
    assert {"held-a", "a", "b", "c", "held-d", "d", "e"} <= keys and "bad" not in keys
    store.close()


def test_group_commit_under_concurrent_writers(db):
    """SQLite and PostgreSQL: 40 threads writing at once (some grouped, however they fall), one
    of them raising: exactly the 39 others are stored, each caller got its own result."""
    import threading

    from sqlalchemy import insert

    store, _ = init_store(db)
    results, errors = {}, {}

    def call(i):
        def fn(conn):
            conn.execute(insert(meta).values(key=f"k{i}", value=str(i)))
            if i == 13:
                raise ValueError("refused after writing")
            return i
        try:
            results[i] = store.write(fn)
        except ValueError as err:
            errors[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: i for i in range(40) if i != 13} and list(errors) == [13]
    with store.engine.connect() as conn:
        keys = set(conn.execute(select(meta.c.key).where(meta.c.key.startswith("k"))).scalars())
    assert keys == {f"k{i}" for i in range(40) if i != 13}
    store.close()


def test_checkpoints_run_outside_commits(tmp_path, add_tasks):
    """No WAL checkpoint inside a commit (autocheckpoint off): the store runs a passive one
    every CHECKPOINT_EVERY write transactions, with the write lock released."""
    from sqlalchemy import event

    store, _ = init_store(str(tmp_path / "l.sqlite"))  # init's transaction counts: 1
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    checkpoints = []  # was the write lock held when it ran?

    @event.listens_for(store.engine, "before_cursor_execute")
    def seen(conn, cursor, statement, *args):
        if "wal_checkpoint" in statement:
            checkpoints.append(store._thread_lock.locked())

    ids = add_tasks(store, 1)  # 2
    for i in range(2 * Store.CHECKPOINT_EVERY - 3):  # → 2 × CHECKPOINT_EVERY − 1
        store.write(lambda conn, i=i: conn.execute(update(tasks).where(tasks.c.id == ids[0])
                                                   .values(random_key=i)))
    assert checkpoints == [False]
    store.write(lambda conn: None)
    assert checkpoints == [False, False]
    store.close()

"""The store and the queue on SQLite and PostgreSQL: schema version, overlap, never twice to
one annotator, leases that expire, the three orders, idempotent submit, skip."""
import random

import pytest
from sqlalchemy import func, select, update

from rlhfkit.label import queue
from rlhfkit.label.schema import SCHEMA_VERSION, assignments, judgments, meta, tasks
from rlhfkit.label.store import Store, StoreError, init_store, open_store, update_settings


def n_judgments(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(judgments)).scalar()


def test_init_refuses_an_existing_store_and_open_checks_the_version(store_and_admin):
    db, store, _ = store_and_admin
    with pytest.raises(StoreError, match="already holds a label store"):
        init_store(db)
    with store.transaction() as conn:
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="99"))
    with pytest.raises(StoreError, match="schema version 99, this rlhfkit reads version "
                                         f"{SCHEMA_VERSION}"):
        open_store(db)


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        open_store(str(tmp_path / "missing.sqlite"))
    (tmp_path / "other.sqlite").write_bytes(b"")
    with pytest.raises(StoreError, match="not a label store"):
        open_store(str(tmp_path / "other.sqlite"))


def test_sqlite_is_wal_and_fsyncs_every_commit(tmp_path):
    store, _ = init_store(str(tmp_path / "l.sqlite"))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
    store.close()


def test_shown_order_is_per_annotator_and_ranks_are_stored_in_slot_order(store_and_admin,
                                                                         annotator, add_tasks):
    _, store, _ = store_and_admin
    update_settings(store, overlap=2)
    (task_id,) = add_tasks(store, 1, k=4)
    alice, bob = annotator(store, "alice"), annotator(store, "bob")
    shown = queue.next_task(store, alice, rng=random.Random(3))
    assert shown["task_id"] == task_id and shown["done"] == 0 and shown["queue"] == 0
    texts = [c["text"] for c in shown["candidates"]]
    assert sorted(texts) == ["r0.0", "r0.1", "r0.2", "r0.3"] and texts != sorted(texts)
    # rank as shown: the first shown best, then the rest; stored in slot order
    ranks_as_shown = [1, 2, 2, 3]
    judgment_id, created = queue.submit(store, alice, task_id, ranks_as_shown, seconds=4.5)
    assert created
    with store.engine.connect() as conn:
        row = conn.execute(select(judgments).where(judgments.c.id == judgment_id)).one()
    slot_of = {f"r0.{j}": j for j in range(4)}
    expected = [0] * 4
    for text, rank in zip(texts, ranks_as_shown):
        expected[slot_of[text]] = rank
    assert row.ranks == expected and row.seconds == 4.5 and row.server_seconds >= 0
    assert row.shown_order == [c["id"] for c in shown["candidates"]]
    # the lease of a second annotator shows the same task in its own stored order
    again = queue.next_task(store, bob, rng=random.Random(4))
    assert again["task_id"] == task_id


def test_overlap_and_never_twice_to_the_same_annotator(store_and_admin, annotator, add_tasks):
    _, store, _ = store_and_admin
    update_settings(store, overlap=2)
    ids = add_tasks(store, 2)
    a, b, c = (annotator(store, n) for n in "abc")
    seen = {}
    for person in (a, b, c):
        for _ in range(2):
            task = queue.next_task(store, person)
            if task is None:
                break
            queue.submit(store, person, task["task_id"], [1, 2, 3])
            seen.setdefault(person.name, []).append(task["task_id"])
    assert seen == {"a": ids, "b": ids}  # two judgments per task fill both; c gets nothing
    assert queue.next_task(store, c) is None and n_judgments(store) == 4
    assert queue.next_task(store, a) is None  # a has judged both: never twice


def test_a_lease_holds_the_slot_until_it_expires(store_and_admin, annotator, add_tasks):
    _, store, _ = store_and_admin
    update_settings(store, lease_seconds=60)
    (task_id,) = add_tasks(store, 1)
    alice, bob = annotator(store, "alice"), annotator(store, "bob")
    assert queue.next_task(store, alice, now=1000.0)["task_id"] == task_id
    assert queue.next_task(store, bob, now=1030.0) is None  # leased to alice
    # alice coming back gets her own lease again, same order
    first = queue.next_task(store, alice, now=1031.0)
    assert queue.next_task(store, alice, now=1032.0)["candidates"] == first["candidates"]
    # 60 s after her last renewal the lease has expired: bob may take it
    assert queue.next_task(store, bob, now=1093.0)["task_id"] == task_id
    # alice's late answer is still kept (the work was done); bob's too: two judgments
    assert queue.submit(store, alice, task_id, [1, 2, 3], now=1100.0)[1]
    assert queue.submit(store, bob, task_id, [3, 2, 1], now=1101.0)[1]
    assert n_judgments(store) == 2


def test_submit_is_idempotent_and_checks_the_lease(store_and_admin, annotator, add_tasks):
    _, store, _ = store_and_admin
    (task_id,) = add_tasks(store, 1)
    alice, bob = annotator(store, "alice"), annotator(store, "bob")
    with pytest.raises(queue.QueueError, match="not leased to you") as err:
        queue.submit(store, alice, task_id, [1, 2, 3])
    assert err.value.status == 409
    queue.next_task(store, alice)
    for ranks, message in (([1, 2], "expected 3 ranks"), ([0, 1, 2], "integers 1..3"),
                           ([1, 4, 2], "integers 1..3")):
        with pytest.raises(queue.QueueError, match=message):
            queue.submit(store, alice, task_id, ranks)
    with pytest.raises(queue.QueueError, match="flags: unknown"):
        queue.submit(store, alice, task_id, [1, 2, 3], flags=["great"])
    first = queue.submit(store, alice, task_id, [1, 1, 2], flags=["all_bad"], comment="meh")
    assert first[1] and queue.submit(store, alice, task_id, [1, 1, 2]) == (first[0], False)
    assert n_judgments(store) == 1
    with pytest.raises(queue.QueueError, match="not leased to you"):
        queue.submit(store, bob, task_id, [1, 2, 3])


def test_skip_releases_the_task_for_others_only(store_and_admin, annotator, add_tasks):
    _, store, _ = store_and_admin
    first, second = add_tasks(store, 2)
    alice, bob = annotator(store, "alice"), annotator(store, "bob")
    assert queue.next_task(store, alice)["task_id"] == first
    queue.skip(store, alice, first)
    with pytest.raises(queue.QueueError):
        queue.skip(store, alice, first)
    assert queue.next_task(store, alice)["task_id"] == second  # never first again
    assert queue.next_task(store, bob)["task_id"] == first  # free for bob


@pytest.mark.parametrize("order", ["fifo", "random", "uncertainty"])
def test_orders(store_and_admin, order, annotator, add_tasks):
    _, store, _ = store_and_admin
    update_settings(store, order=order, overlap=1)
    ids = add_tasks(store, 4)
    gaps = {ids[0]: 0.9, ids[1]: None, ids[2]: 0.1, ids[3]: 0.5}
    with store.transaction() as conn:
        for task_id, gap in gaps.items():
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(score_gap=gap))
        keys = dict(conn.execute(select(tasks.c.id, tasks.c.random_key)).all())
    alice = annotator(store, "alice")
    got = []
    while (task := queue.next_task(store, alice)) is not None:
        got.append(task["task_id"])
        queue.skip(store, alice, task["task_id"])
    expected = {"fifo": ids, "random": sorted(ids, key=keys.get),
                "uncertainty": [ids[2], ids[3], ids[0], ids[1]]}[order]  # closest first
    assert got == expected


@pytest.mark.parametrize("order", ["fifo", "random", "uncertainty"])
def test_completed_tasks_are_never_picked_nor_counted(store_and_admin, order, annotator, add_tasks):
    """The pick and the queue size read open tasks only (tasks.open, store.TASK_INDEXES): after
    20 of 30 tasks are complete, b is offered exactly the other 10, in the order's order."""
    _, store, _ = store_and_admin
    update_settings(store, order=order)
    ids = add_tasks(store, 30)
    with store.transaction() as conn:  # distinct gaps, a third unscored
        conn.execute(update(tasks).where(tasks.c.id % 3 != 0)
                     .values(score_gap=tasks.c.random_key))
    a, b = annotator(store, "a"), annotator(store, "b")
    done = []
    for _ in range(20):
        task = queue.next_task(store, a)
        queue.submit(store, a, task["task_id"], [1, 2, 3])
        done.append(task["task_id"])
    with store.engine.connect() as conn:
        assert queue.queue_size(conn, a.id) == queue.queue_size(conn, b.id) == 10
    offered, sizes = [], []
    while (task := queue.next_task(store, b)) is not None:
        offered.append(task["task_id"])
        sizes.append(task["queue"])
        queue.skip(store, b, task["task_id"])
    with store.engine.connect() as conn:
        rows = conn.execute(select(tasks.c.id, tasks.c.random_key, tasks.c.score_gap)).all()
    key = {"fifo": lambda r: r.id, "random": lambda r: (r.random_key, r.id),
           "uncertainty": lambda r: (r.score_gap is None, r.score_gap or 0.0, r.id)}[order]
    in_order = [r.id for r in sorted(rows, key=key)]
    assert sorted(in_order) == ids
    assert done == in_order[:20] and offered == in_order[20:]
    assert sizes == list(range(9, -1, -1)) and n_judgments(store) == 20


def _vm_steps(store: Store, statement, params) -> int:
    """SQLite virtual-machine instructions one execution of ``statement`` takes: a count of the
    work that does not depend on the machine's speed (sqlite3's progress handler, every step)."""
    steps = 0

    def count():
        nonlocal steps
        steps += 1
        return 0

    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.set_progress_handler(count, 1)
        try:
            conn.execute(statement, params).all()
        finally:
            raw.set_progress_handler(None, 1)
    return steps


def test_the_fifo_pick_does_not_walk_completed_tasks(tmp_path, annotator, add_tasks):
    """The pick's cost does not grow with the tasks completed before the first open one (it did:
    it walked them all, docs/label.md "Measured"); a walk would show: leases at the head of the
    queue, which it must walk, do add steps."""
    store, _ = init_store(str(tmp_path / "l.sqlite"))
    add_tasks(store, 60)
    a, b = annotator(store, "a"), annotator(store, "b")
    pick = queue.PICK["fifo"]

    def steps_after(n_judged: int) -> int:
        while n_judgments(store) < n_judged:
            task = queue.next_task(store, a)
            queue.submit(store, a, task["task_id"], [1, 2, 3])
        return _vm_steps(store, pick, {"me": b.id, "now": 0.0})

    early, late = steps_after(2), steps_after(50)
    assert late == early
    for name in ("c", "d", "e"):  # three tasks leased at the head of the queue
        queue.next_task(store, annotator(store, name), now=0.0)
    assert _vm_steps(store, pick, {"me": b.id, "now": 0.0}) > late
    store.close()


def test_an_expired_lease_and_a_late_judgment_close_the_task_once(store_and_admin,
                                                                  annotator, add_tasks):
    _, store, _ = store_and_admin
    update_settings(store, lease_seconds=60)
    (task_id,) = add_tasks(store, 1)
    alice, bob, carol = (annotator(store, n) for n in ("alice", "bob", "carol"))
    assert queue.next_task(store, alice, now=1000.0)["task_id"] == task_id
    assert queue.next_task(store, bob, now=1030.0) is None  # leased to alice, still open
    with store.engine.connect() as conn:
        assert queue.queue_size(conn, bob.id) == 1 and queue.queue_size(conn, alice.id) == 0
    assert queue.next_task(store, bob, now=1061.0)["task_id"] == task_id  # expired: bob's
    assert queue.submit(store, alice, task_id, [1, 2, 3], now=1062.0)[1]  # late, kept
    assert queue.next_task(store, carol, now=1063.0) is None  # complete now
    assert queue.submit(store, bob, task_id, [3, 2, 1], now=1064.0)[1]
    with store.engine.connect() as conn:
        row = conn.execute(select(tasks.c.judged, tasks.c.open)).one()
        assert tuple(row) == (2, False)
        assert [queue.queue_size(conn, p.id) for p in (alice, bob, carol)] == [0, 0, 0]


def test_the_queue_size_is_the_open_tasks_never_assigned_to_them(store_and_admin, annotator,
                                                                  add_tasks):
    """queue_size against the open tasks counted one by one, through judgments, skips, leases
    and overlap changes (QUEUE_SIZE reads an annotator's assignments from the first open task
    on: skipped and judged tasks behind it, and open ones after it, must both count right)."""
    _, store, _ = store_and_admin
    ids = add_tasks(store, 12, k=2)
    people = [annotator(store, name) for name in ("a", "b", "c")]

    def by_hand(conn, who) -> int:
        mine = set(conn.execute(select(assignments.c.task_id)
                                .where(assignments.c.annotator_id == who.id)).scalars())
        return sum(1 for task_id, is_open in conn.execute(select(tasks.c.id, tasks.c.open))
                   if is_open and task_id not in mine)

    def check() -> None:
        with store.engine.connect() as conn:
            for who in people:
                assert queue.queue_size(conn, who.id) == by_hand(conn, who)

    a, b, c = people
    queue.skip(store, a, queue.next_task(store, a)["task_id"])  # ids[0]: open, a's skip
    check()
    for _ in range(3):  # a and b judge ids[0..5] in turn (b takes ids[0], which a skipped)
        task = queue.next_task(store, a)
        queue.submit(store, a, task["task_id"], [1, 2])
        task = queue.next_task(store, b)
        queue.submit(store, b, task["task_id"], [2, 1])
    check()
    update_settings(store, overlap=2)  # judged tasks reopen behind the first open one
    check()
    queue.next_task(store, c)  # c leases ids[0]
    for _ in range(2):
        task = queue.next_task(store, a)
        queue.submit(store, a, task["task_id"], [1, 2])
    check()
    update_settings(store, overlap=1)
    check()
    with store.engine.connect() as conn:  # ids[6:] open, none of them assigned yet
        assert [queue.queue_size(conn, p.id) for p in people] == [len(ids[6:])] * 3

"""The HTTP API (FastAPI's TestClient, in process) on SQLite and PostgreSQL: the contract of
docs/label.md, auth (401/403), 422 naming the field, 413, idempotent POST, skip, admin."""
import json
import random

import pytest
from fastapi.testclient import TestClient

from rlhfkit.label.app import create_app
from rlhfkit.label.export import summary
from rlhfkit.label.leaderboard import leaderboard
from rlhfkit.label.store import add_annotator, add_task


@pytest.fixture
def api(store_and_admin):
    db, store, admin_token = store_and_admin
    rng = random.Random(0)
    with store.transaction() as conn:
        for i in range(3):
            add_task(conn, (("user", f"<b>prompt</b> {i}"),), [f"a{i}", f"b{i}", f"c{i}"],
                     ["m"] * 3, [{"temperature": 1.0}] * 3, rng)
    tokens = {name: add_annotator(store, name) for name in ("alice", "bob")}
    with TestClient(create_app(db, max_body_bytes=4096)) as client:
        yield client, admin_token, tokens


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_annotator_flow(api):
    client, _, tokens = api
    alice = auth(tokens["alice"])
    assert client.get("/api/me", headers=alice).json() == {"name": "alice", "done": 0, "queue": 3}
    task = client.get("/api/tasks/next", headers=alice).json()
    assert task["prompt"] == "<b>prompt</b> 0" and len(task["candidates"]) == 3
    assert set(task["candidates"][0]) == {"id", "text"} and (task["done"], task["queue"]) == (0, 2)
    body = {"task_id": task["task_id"], "ranks": [2, 1, 3], "flags": [], "comment": "ok",
            "seconds": 3.0}
    first = client.post("/api/judgments", json=body, headers=alice)
    assert first.status_code == 201 and isinstance(first.json()["judgment_id"], int)
    again = client.post("/api/judgments", json=body, headers=alice)
    assert again.status_code == 200 and again.json() == first.json()
    assert client.get("/api/me", headers=alice).json() == {"name": "alice", "done": 1, "queue": 2}
    nxt = client.get("/api/tasks/next", headers=alice).json()
    assert client.post(f"/api/tasks/{nxt['task_id']}/skip", headers=alice).status_code == 200
    last = client.get("/api/tasks/next", headers=alice).json()
    assert last["task_id"] not in (task["task_id"], nxt["task_id"])
    assert client.post("/api/judgments", headers=alice, json={
        "task_id": last["task_id"], "ranks": [1, 1], }).status_code == 422  # K = 3
    client.post("/api/judgments", headers=alice, json={"task_id": last["task_id"],
                                                      "ranks": [1, 1, 1], "flags": ["all_bad"]})
    empty = client.get("/api/tasks/next", headers=alice)
    assert empty.status_code == 204 and empty.content == b""


@pytest.mark.parametrize("body, field", [
    ({"ranks": [1, 2, 3]}, "task_id"),
    ({"task_id": 1, "ranks": "12"}, "ranks"),
    ({"task_id": 1, "ranks": [1, 2, 3], "seconds": -1}, "seconds"),
    ({"task_id": 1, "ranks": [1, 2, 3], "extra": 1}, "extra"),
])
def test_malformed_body_is_422_naming_the_field(api, body, field):
    client, _, tokens = api
    client.get("/api/tasks/next", headers=auth(tokens["alice"]))
    response = client.post("/api/judgments", json=body, headers=auth(tokens["alice"]))
    assert response.status_code == 422
    assert field in json.dumps(response.json()["detail"])


def test_queue_errors_name_the_field_too(api):
    client, _, tokens = api
    task = client.get("/api/tasks/next", headers=auth(tokens["alice"])).json()
    response = client.post("/api/judgments", headers=auth(tokens["alice"]), json={
        "task_id": task["task_id"], "ranks": [1, 2, 9]})
    assert response.status_code == 422 and response.json()["detail"].startswith("ranks:")
    response = client.post("/api/judgments", headers=auth(tokens["alice"]), json={
        "task_id": task["task_id"], "ranks": [1, 2, 3], "flags": ["lovely"]})
    assert response.status_code == 422 and response.json()["detail"].startswith("flags:")


def test_someone_elses_task_is_409(api):
    client, _, tokens = api
    task = client.get("/api/tasks/next", headers=auth(tokens["alice"])).json()
    body = {"task_id": task["task_id"], "ranks": [1, 2, 3]}
    assert client.post("/api/judgments", json=body, headers=auth(tokens["bob"])).status_code == 409
    skip = client.post(f"/api/tasks/{task['task_id']}/skip", headers=auth(tokens["bob"]))
    assert skip.status_code == 409
    # bob's queue does not show alice's leased task (overlap 1)
    assert client.get("/api/tasks/next", headers=auth(tokens["bob"])).json()["task_id"] != \
        task["task_id"]


def test_auth_401_and_403(api):
    client, admin_token, tokens = api
    for path in ("/api/me", "/api/tasks/next", "/api/admin/summary", "/api/admin/leaderboard"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=auth("not-a-token")).status_code == 401
        assert client.get(path, headers={"Authorization": "Basic abc"}).status_code == 401
    alice = auth(tokens["alice"])
    assert client.get("/api/admin/summary", headers=alice).status_code == 403
    assert client.get("/api/admin/export?format=ranked", headers=alice).status_code == 403
    assert client.get("/api/admin/leaderboard", headers=alice).status_code == 403
    assert client.post("/api/admin/annotators", json={"name": "eve"}, headers=alice
                       ).status_code == 403
    assert client.get("/api/tasks/next", headers=auth(admin_token)).status_code == 403
    admin = auth(admin_token)
    assert client.post("/api/admin/annotators/alice/disable", headers=admin).status_code == 200
    assert client.get("/api/me", headers=alice).status_code == 403
    assert client.post("/api/admin/annotators/nobody/disable", headers=admin).status_code == 404


def test_admin_api(api):
    client, admin_token, tokens = api
    admin = auth(admin_token)
    created = client.post("/api/admin/annotators", json={"name": "carol"}, headers=admin)
    assert created.status_code == 201
    carol = created.json()
    assert carol["name"] == "carol" and carol["link"].endswith(f"/?token={carol['token']}")
    assert client.post("/api/admin/annotators", json={"name": "carol"},
                       headers=admin).status_code == 409
    task = client.get("/api/tasks/next", headers=auth(carol["token"])).json()
    client.post("/api/judgments", headers=auth(carol["token"]),
                json={"task_id": task["task_id"], "ranks": [1, 2, 2], "seconds": 7})
    summary = client.get("/api/admin/summary", headers=admin).json()
    assert (summary["tasks"], summary["complete"], summary["judgments"]) == (3, 1, 1)
    rows = {row["name"]: row for row in summary["annotators"]}
    assert set(rows) == {"alice", "bob", "carol"} and rows["carol"]["judgments"] == 1
    assert rows["carol"]["median_seconds"] == 7 and rows["alice"]["active"] is True
    exported = client.get("/api/admin/export?format=ranked", headers=admin)
    assert exported.status_code == 200
    (row,) = [json.loads(line) for line in exported.text.splitlines()]
    assert row["ranks"] == [1, 2, 2] and row["prompt"] == task["prompt"]
    assert row["responses"][0] == task["candidates"][0]["text"]
    pairs = client.get("/api/admin/export?format=pairs", headers=admin).text.splitlines()
    assert len(pairs) == 2  # best vs each of the two tied
    assert client.get("/api/admin/export?format=csv", headers=admin).status_code == 422


def test_admin_leaderboard_rows_with_the_tag_filter(store_and_admin):
    """Two tasks tagged round-0/compare, one round-1/compare, each "new" vs an "old" whose name
    is markup; alice prefers "new" in round 0 and "old" in round 1 through the API."""
    db, store, admin_token = store_and_admin
    rng = random.Random(0)
    old = "<b>old</b>"
    with store.transaction() as conn:
        for i, tag in enumerate(("round-0/compare", "round-0/compare", "round-1/compare")):
            add_task(conn, (("user", f"p{i}"),), [f"old {i}", f"new {i}"], [old, "new"],
                     [{}] * 2, rng, tag=tag)
    alice = auth(add_annotator(store, "alice"))
    with TestClient(create_app(db)) as client:
        for _ in range(3):
            task = client.get("/api/tasks/next", headers=alice).json()
            best = "new" if task["prompt"] != "p2" else "old"
            ranks = [1 if c["text"].startswith(best) else 2 for c in task["candidates"]]
            assert client.post("/api/judgments", headers=alice, json={
                "task_id": task["task_id"], "ranks": ranks}).status_code == 201
        admin = auth(admin_token)
        response = client.get("/api/admin/leaderboard?bootstrap=50", headers=admin)
        assert response.status_code == 200
        rows = response.json()
        assert rows == leaderboard(store, n=50)  # the rows of `label leaderboard --json`
        assert [(r["model"], r["comparisons"]) for r in rows] == [("new", 3), (old, 3)]
        assert rows[0]["lo"] < rows[0]["elo"] < rows[0]["hi"]
        default = client.get("/api/admin/leaderboard", headers=admin).json()
        assert default == leaderboard(store)  # 1,000 resamples unless told
        round_1 = client.get("/api/admin/leaderboard?tag=round-1/&bootstrap=0", headers=admin)
        assert [(r["model"], r["comparisons"], r["lo"], r["hi"]) for r in round_1.json()] == \
            [(old, 1, None, None), ("new", 1, None, None)]  # round 1 only: old won
        assert client.get("/api/admin/leaderboard?tag=round-0/", headers=admin).json() == \
            leaderboard(store, "round-0/")
        assert client.get("/api/admin/leaderboard?tag=round-9/", headers=admin).json() == []
        for bad in ("bootstrap=-1", "bootstrap=many", "tag=" + "r" * 101):
            response = client.get(f"/api/admin/leaderboard?{bad}", headers=admin)
            assert response.status_code == 422
            assert bad.split("=")[0] in json.dumps(response.json()["detail"])


def test_admin_summary_with_the_tag_filter(store_and_admin):
    """?tag=PREFIX: the summary of the tasks whose tag starts with it, as `label stats --tag`
    (export.summary); a tag over 100 characters → 422 naming it; annotators: 403."""
    db, store, admin_token = store_and_admin
    rng = random.Random(0)
    with store.transaction() as conn:
        for i, tag in enumerate(("round-0/sample", "round-0/sample", "round-1/sample", None)):
            add_task(conn, (("user", f"p{i}"),), [f"a{i}", f"b{i}"], ["m"] * 2, [{}] * 2, rng,
                     tag=tag)
    alice = auth(add_annotator(store, "alice"))
    with TestClient(create_app(db)) as client:
        for ranks in ([1, 2], [2, 1], [1, 1]):  # fifo: p0 and p1 (round 0), then p2 (round 1)
            task = client.get("/api/tasks/next", headers=alice).json()
            assert client.post("/api/judgments", headers=alice, json={
                "task_id": task["task_id"], "ranks": ranks}).status_code == 201
        admin = auth(admin_token)
        counts = {}
        for tag in ("round-0/", "round-1/", "round-", "round-9/", None):
            response = client.get("/api/admin/summary", params={"tag": tag} if tag else {},
                                  headers=admin)
            assert response.status_code == 200
            assert response.json() == summary(store, tag)
            counts[tag] = tuple(response.json()[k] for k in ("tasks", "complete", "judgments"))
        assert counts == {"round-0/": (2, 2, 2), "round-1/": (1, 1, 1), "round-": (3, 3, 3),
                          "round-9/": (0, 0, 0), None: (4, 3, 3)}
        response = client.get("/api/admin/summary", params={"tag": "r" * 101}, headers=admin)
        assert response.status_code == 422 and "tag" in json.dumps(response.json()["detail"])
        assert client.get("/api/admin/summary?tag=round-0/", headers=alice).status_code == 403


def test_request_size_limit(api):
    client, _, tokens = api
    task = client.get("/api/tasks/next", headers=auth(tokens["alice"])).json()
    big = {"task_id": task["task_id"], "ranks": [1, 2, 3], "comment": "x" * 5000}
    response = client.post("/api/judgments", json=big, headers=auth(tokens["alice"]))
    assert response.status_code == 413

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"task_id": 1, "ranks": [1, 2, 3], "comment": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/api/judgments", content=chunks(), headers={
        **auth(tokens["alice"]), "Content-Type": "application/json"})
    assert response.status_code == 413


def test_openapi_and_pages(api):
    client, _, _ = api
    spec = client.get("/openapi.json").json()
    assert {"/api/tasks/next", "/api/judgments", "/api/admin/summary",
            "/api/admin/leaderboard"} <= set(spec["paths"])
    for path in ("/", "/admin"):  # the pages, served from the package with no CDN
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_a_connection_the_database_dropped_costs_no_request(postgres_server):
    """No pre-ping per checkout (a round trip per transaction): a pooled connection PostgreSQL
    dropped fails its first statement, SQLAlchemy renews the pool and the app retries the call
    once (app.py: _store_call) — the annotator sees nothing."""
    import bench_label as live  # bench/label.py (tests/conftest.py: BenchModules)
    import psycopg

    from rlhfkit.label.store import init_store

    db = live.new_postgres_db(postgres_server)
    store, _ = init_store(db)
    with store.transaction() as conn:
        add_task(conn, (("user", "p"),), ["a", "b"], ["m"] * 2, [{}] * 2, random.Random(0))
    alice = auth(add_annotator(store, "alice"))
    store.close()
    with TestClient(create_app(db)) as client:
        task = client.get("/api/tasks/next", headers=alice).json()
        sock, port = postgres_server
        name = db.split("@/", 1)[1].split("?", 1)[0]
        with psycopg.connect(host=sock, port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            dropped = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM "
                                   "pg_stat_activity WHERE datname = %s", (name,)).fetchone()[0]
        assert dropped >= 1  # the app's pooled connection(s)
        again = client.get("/api/tasks/next", headers=alice)
        assert again.status_code == 200 and again.json() == task  # their lease, same order
        body = {"task_id": task["task_id"], "ranks": [1, 2]}
        assert client.post("/api/judgments", json=body, headers=alice).status_code == 201


def test_the_pool_is_open_before_the_first_request(store_and_admin):
    """create_app opens the connections its store threads will use (Store.open_connections),
    so the first requests do not wait for connect + authentication: right after start-up the
    pool holds min(store threads, pool size) idle connections — PostgreSQL 4 of 16, SQLite 8
    of 8 (16 threads) — where a lazy pool would hold the one that read the admin token."""
    db, _, _ = store_and_admin
    app = create_app(db)
    try:
        pool = app.state.store.engine.pool
        expected = min(app.state.store_threads, pool.size())
        assert expected == {"sqlite": 8, "postgresql": 4}[app.state.store.engine.dialect.name]
        assert (pool.checkedin(), pool.checkedout()) == (expected, 0)
        two = create_app(db, store_threads=2).state.store
        assert two.engine.pool.checkedin() == 2
        two.close()
    finally:
        app.state.store.close()

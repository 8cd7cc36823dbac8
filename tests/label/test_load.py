"""Load and fault tests against a real ``rlhfkit label serve`` (uvicorn) process, loopback only:
50 concurrent annotators × 20 judgments = 1,000 → exactly 1,000 stored, no 5xx; the same with
the server killed (-9) half-way and restarted: every acknowledged (2xx) judgment is stored,
none twice. On SQLite and on PostgreSQL. The client and server: bench/label.py."""
import asyncio

import bench_label as live  # bench/label.py (tests/conftest.py: BenchModules)
import pytest
from sqlalchemy import func, select

from rlhfkit.label.schema import judgments
from rlhfkit.label.store import open_store

CLIENTS, PER_CLIENT = 50, 20


def stored(db: str) -> list[tuple]:
    store = open_store(db)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(judgments.c.id, judgments.c.task_id,
                                       judgments.c.annotator_id)).all()
            per_pair = conn.execute(select(func.count()).select_from(judgments).group_by(
                judgments.c.task_id, judgments.c.annotator_id).having(func.count() > 1)).all()
    finally:
        store.close()
    assert per_pair == []  # never two judgments of one annotator on one task
    return rows


@pytest.mark.parametrize("kill", [False, True], ids=["steady", "kill9"])
def test_1000_concurrent_judgments(db, tmp_path, kill):
    admin_token, tokens = live.prepare(db, n_tasks=CLIENTS * PER_CLIENT + 50, n_annotators=CLIENTS)
    log = open(tmp_path / "server.log", "w")
    server = live.LiveServer(db, admin_token, log=log).start()
    killed = []

    async def kill_half_way(acked: int):
        if kill and not killed and acked >= CLIENTS * PER_CLIENT // 2:
            killed.append(acked)
            server.kill()  # SIGKILL mid-traffic: requests in flight die with it
            await asyncio.sleep(0.2)
            await asyncio.to_thread(server.start)

    try:
        result = asyncio.run(live.run_clients(server.url, tokens, PER_CLIENT, kill_half_way,
                                              timeout=150))
    finally:
        server.stop()
        log.close()
    assert not any(status >= 500 for status in result.statuses), result.statuses
    assert len(result.acked) == CLIENTS * PER_CLIENT
    rows = stored(db)
    assert len(rows) == CLIENTS * PER_CLIENT  # exactly: none lost, none twice
    acked_ids = {judgment_id for _, _, judgment_id, _ in result.acked}
    assert acked_ids <= {row.id for row in rows}  # every acknowledged judgment survived
    assert len(acked_ids) == CLIENTS * PER_CLIENT
    if kill:
        assert killed and result.transport_errors > 0  # the kill really hit traffic
    else:
        assert set(result.statuses) <= {200, 201} and result.transport_errors == 0

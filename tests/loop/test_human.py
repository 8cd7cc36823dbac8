"""``annotator: human``: the loop starts ``rlhfkit label serve`` on the store and waits; a person
(here httpx through the HTTP API, as the page does) ranks the round's tasks and the comparison,
and the loop goes on as soon as the judgments are in."""
import json
import re
import socket
import subprocess
import sys
import time

import httpx
from sqlalchemy import func, select

from rlhfkit.label.schema import judgments, tasks
from rlhfkit.label.store import add_annotator, init_store, open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_human_path_through_the_http_api(tiny_example, tmp_path):
    example, overrides = tiny_example
    db = tmp_path / "labels.sqlite"
    store, _ = init_store(str(db))
    token = add_annotator(store, "alice")
    store.close()
    port = free_port()
    command = [sys.executable, "-m", "rlhfkit", "loop", "--config", str(example),
               *overrides(tmp_path / "human"), "rounds=1", "annotator=human",
               f"store={db}", "human.serve=true", f"human.port={port}",
               "human.poll_seconds=0.2", "prompts_per_round=4", "labels_per_round=4",
               "compare_prompts=3"]
    log = open(tmp_path / "loop.log", "w")
    loop = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    posted, waited_with_empty_queue = [], False
    deadline = time.time() + 150
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            while loop.poll() is None and time.time() < deadline:
                try:
                    answer = client.get("/api/tasks/next")
                except httpx.TransportError:  # the server is starting
                    time.sleep(0.2)
                    continue
                if answer.status_code == 204:  # the loop is training between the rankings
                    waited_with_empty_queue = waited_with_empty_queue or bool(posted)
                    time.sleep(0.2)
                    continue
                task = answer.json()
                # a person who prefers the longer answer (ties share a rank)
                lengths = [len(c["text"]) for c in task["candidates"]]
                ranks = [1 + sum(other > mine for other in lengths) for mine in lengths]
                reply = client.post("/api/judgments", json={
                    "task_id": task["task_id"], "ranks": ranks, "flags": [], "comment": "",
                    "seconds": 1.0})
                assert reply.status_code == 201, reply.text
                posted.append(task["task_id"])
        loop.wait(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
        log.close()
    output = (tmp_path / "loop.log").read_text()
    assert loop.returncode == 0, output[-4000:]
    assert re.search(r"round-0/sample: [0-3]/4 judgments", output)  # waited, showing progress
    assert "round-0/sample: 4/4 judgments" in output
    assert waited_with_empty_queue  # the compare tasks came after training
    store = open_store(str(db))
    with store.engine.connect() as conn:
        per_tag = dict(conn.execute(select(tasks.c.tag, func.count()).join(
            judgments, judgments.c.task_id == tasks.c.id).group_by(tasks.c.tag)).all())
    store.close()
    assert per_tag == {"round-0/sample": 4, "round-0/compare": 3}
    assert len(posted) == len(set(posted)) == 7
    row = json.loads((tmp_path / "human" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["labels"] == 4 and row["score_judge"] is not None  # the judge still scores
    assert 0 <= row["win_rate_previous"] <= 1

"""`rlhfkit label …` end to end through rlhfkit.cli.main: the commands of the issue in order,
generate with the project's decode loop on tiny-llama, one-line errors with exit 2."""
import json

import pytest
from sqlalchemy import select

from rlhfkit.cli import main
from rlhfkit.label import queue
from rlhfkit.label.commands import DEFAULT_HOST, _parser
from rlhfkit.label.schema import candidates, tasks
from rlhfkit.label.store import add_annotator, hash_token, open_store


def test_generate_stores_k_candidates_with_model_and_settings(tmp_path, capsys, device):
    db = str(tmp_path / "l.sqlite")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {w}."}) + "\n"
                               for w in ("cats", "rain", "bread")))
    assert main(["label", "init", "--db", db]) == 0
    assert "admin link" in capsys.readouterr().out
    assert main(["label", "generate", "--db", db, "--policy", "tiny-llama", "--prompts",
                 str(prompts), "--k", "3", "--max-new-tokens", "8", "--temperature", "1.0",
                 "--top-k", "50", "--seed", "1", "--template", "plain", "--device", device,
                 "--tag", "round-0/sample"]) == 0
    assert "added 3 tasks" in capsys.readouterr().out
    store = open_store(db)
    with store.engine.connect() as conn:
        rows = conn.execute(select(candidates.c.task_id, candidates.c.model,
                                   candidates.c.settings, candidates.c.text)).all()
        n_tasks = len(conn.execute(select(tasks.c.id)).all())
        tags = set(conn.execute(select(tasks.c.tag)).scalars())
    store.close()
    assert n_tasks == 3 and len(rows) == 9  # a random tiny model's samples are distinct
    assert tags == {"round-0/sample"}
    assert {r.model for r in rows} == {"tiny-llama"}
    assert rows[0].settings == {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0,
                                "top_k": 50, "seed": 1}


def test_the_commands_in_order(tmp_path, capsys):
    db = str(tmp_path / "l.sqlite")
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "models": ["m1", "m2"]})
                    + "\n" + json.dumps({"prompt": "q", "responses": ["same", "same"]}) + "\n")
    assert main(["label", "init", "--db", db, "--overlap", "2", "--order", "random"]) == 0
    assert main(["label", "import", "--db", db, "--data", str(data)]) == 0
    assert "added 1 tasks (skipped 1 prompts" in capsys.readouterr().out
    assert main(["label", "add-annotator", "--db", db, "alice"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("http://127.0.0.1:8765/?token=") and len(link) > 40
    assert main(["label", "disable-annotator", "--db", db, "alice"]) == 0
    assert main(["label", "config", "--db", db, "--overlap", "3"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["overlap"] == 3
    assert main(["label", "admin-token", "--db", db]) == 0
    assert "/admin?token=" in capsys.readouterr().out
    assert main(["label", "stats", "--db", db, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["tasks"], summary["overlap"], summary["order"]) == (1, 3, "random")
    assert summary["annotators"][0]["active"] is False
    assert main(["label", "stats", "--db", db]) == 0
    assert "Krippendorff" in capsys.readouterr().out
    out = tmp_path / "r.jsonl"
    assert main(["label", "export", "--db", db, "--format", "ranked", "--out", str(out)]) == 0
    assert out.read_text() == ""  # nothing judged yet


def test_tag_on_import_then_stats_and_export_by_tag_prefix(tmp_path, capsys):
    """Three batches: round-0/sample (2 tasks), round-1/sample (1), untagged (1); alice ranks
    every task, the response named "good …" best. --tag PREFIX keeps the tasks whose tag starts
    with it, as `label leaderboard --tag` does."""
    db = str(tmp_path / "l.sqlite")
    assert main(["label", "init", "--db", db]) == 0
    for name, tag, n in (("r0", "round-0/sample", 2), ("r1", "round-1/sample", 1),
                         ("none", None, 1)):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"{name} {i}", "responses": [
            f"good {name} {i}", f"bad {name} {i}", f"worse {name} {i}"]}) + "\n"
            for i in range(n)))
        assert main(["label", "import", "--db", db, "--data", str(data)]
                    + (["--tag", tag] if tag else [])) == 0
    store = open_store(db)
    with store.engine.connect() as conn:
        tag_of = dict(conn.execute(select(tasks.c.id, tasks.c.tag)).all())
    assert sorted(tag_of.values(), key=str) == [None, "round-0/sample", "round-0/sample",
                                                "round-1/sample"]
    alice = queue.annotator_by_token_hash(store, hash_token(add_annotator(store, "alice")))
    while (task := queue.next_task(store, alice)) is not None:
        order = ("good", "bad", "worse")
        queue.submit(store, alice, task["task_id"], [
            order.index(c["text"].split()[0]) + 1 for c in task["candidates"]])
    store.close()
    capsys.readouterr()

    def stats(*tag):
        assert main(["label", "stats", "--db", db, "--json", *tag]) == 0
        out = json.loads(capsys.readouterr().out)
        return out["tasks"], out["judgments"], out["complete"], out["annotators"][0]["judgments"]

    assert stats() == (4, 4, 4, 4)
    assert stats("--tag", "round-") == (3, 3, 3, 3)
    assert stats("--tag", "round-1/") == (1, 1, 1, 1)
    assert stats("--tag", "round-9/") == (0, 0, 0, 0)
    assert main(["label", "stats", "--db", db, "--tag", "round-0/"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("only tasks whose tag starts with 'round-0/'\ntasks 2  complete 2")

    def export(fmt, *tag):
        out = tmp_path / "out.jsonl"
        assert main(["label", "export", "--db", db, "--format", fmt, "--out", str(out),
                     *tag]) == 0
        capsys.readouterr()
        return [json.loads(line) for line in out.read_text().splitlines()]

    assert [r["prompt"] for r in export("ranked")] == ["r0 0", "r0 1", "r1 0", "none 0"]
    round_0 = export("ranked", "--tag", "round-0/")
    assert [r["prompt"] for r in round_0] == ["r0 0", "r0 1"]
    assert round_0[0]["responses"] == ["good r0 0", "bad r0 0", "worse r0 0"]
    assert {tag_of[r["task_id"]] for r in export("pairs", "--tag", "round-1/")} == \
        {"round-1/sample"}
    assert len(export("pairs", "--tag", "round-1/")) == 3  # C(3, 2) pairs of one task
    assert export("ranked", "--tag", "none") == []  # the untagged task matches no prefix


@pytest.mark.parametrize("argv, message", [
    (["import", "--db", "{tmp}/none.sqlite", "--data", "x.jsonl"], "no such file"),
    (["stats", "--db", "{tmp}/empty.sqlite"], "not a label store"),
    (["init", "--db", "{tmp}/store.sqlite"], "already holds a label store"),
    (["import", "--db", "{tmp}/store.sqlite", "--data", "{tmp}/bad.jsonl"],
     "bad.jsonl:1: field 'responses'"),
    (["add-annotator", "--db", "{tmp}/store.sqlite", "bob"], "already exists"),
    (["disable-annotator", "--db", "{tmp}/store.sqlite", "nobody"], "no annotator named"),
    (["config", "--db", "{tmp}/store.sqlite", "--overlap", "0"], "overlap=0"),
    (["stats", "--db", "mysql://x@y/z"], "only SQLite"),
    (["import", "--db", "{tmp}/store.sqlite", "--data", "{tmp}/good.jsonl", "--tag", ""],
     "tag '' (0 characters): expected 1–100 printable characters"),
    (["import", "--db", "{tmp}/store.sqlite", "--data", "{tmp}/good.jsonl", "--tag", "r" * 101],
     "(101 characters): expected 1–100"),
    (["import", "--db", "{tmp}/store.sqlite", "--data", "{tmp}/good.jsonl", "--tag", "round 1 "],
     "no space at either end"),
    (["import", "--db", "{tmp}/store.sqlite", "--data", "{tmp}/good.jsonl", "--tag", "a\nb"],
     "printable"),
    # checked before the policy loads: no such model is ever looked for
    (["generate", "--db", "{tmp}/store.sqlite", "--policy", "no/such-model", "--prompts",
      "{tmp}/good.jsonl", "--tag", " x"], "tag ' x'"),
])
def test_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty.sqlite").write_bytes(b"")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "responses": "ab"}) + "\n")
    (tmp_path / "good.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]})
                                         + "\n")
    main(["label", "init", "--db", str(tmp_path / "store.sqlite")])
    main(["label", "add-annotator", "--db", str(tmp_path / "store.sqlite"), "bob"])
    capsys.readouterr()
    code = main(["label"] + [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    if "--tag" in argv:  # nothing was added
        store = open_store(str(tmp_path / "store.sqlite"))
        with store.engine.connect() as conn:
            assert conn.execute(select(tasks.c.id)).all() == []
        store.close()


def test_serve_binds_loopback_unless_told():
    args = _parser().parse_args(["serve", "--db", "x.sqlite"])
    assert (args.host, args.port) == (DEFAULT_HOST, 8765) and DEFAULT_HOST == "127.0.0.1"


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_holds_only_the_connections_it_serves(db, tmp_path, capsys, monkeypatch,
                                                     workers):
    """While uvicorn runs, the only store with connections is the app's: one process serves its
    own (create_app opens its pool), with ``--workers 2`` the workers open theirs and the parent
    holds none (it checked the store and closed it), and a store it cannot open is still a
    one-line error before anything is served. uvicorn.run is replaced: it records, for every
    engine the command connected, the connections in its pool at that moment."""
    import uvicorn

    from rlhfkit.label import app as label_app
    from rlhfkit.label import store as label_store

    assert main(["label", "init", "--db", db]) == 0
    engines, held = [], []
    connect = label_store.connect

    def recording_connect(db_):
        engines.append(connect(db_))
        return engines[-1]

    def run(app, **options):
        served = None if isinstance(app, str) else app.state.store.engine
        held.append({"workers": options.get("workers", 1), "app's": sum(
            e.pool.checkedin() + e.pool.checkedout() for e in engines if e is served),
            "others'": [e.pool.checkedin() + e.pool.checkedout() for e in engines
                        if e is not served]})
        if served is not None:
            app.state.store.close()  # its lifespan never runs

    monkeypatch.setattr(label_store, "connect", recording_connect)
    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(label_app, "freeze_startup_objects", lambda: None)  # apps come and go
    for name in ("DB", "ADMIN_TOKEN", "MAX_BODY", "STORE_THREADS"):  # serve sets them: undone
        monkeypatch.setenv(f"RLHFKIT_LABEL_{name}", "")
    assert main(["label", "serve", "--db", db, "--workers", str(workers)]) == 0
    if workers == 1:  # the pool create_app opened (SQLite 8, PostgreSQL 4), and nothing else
        assert held == [{"workers": 1, "app's": 8 if "://" not in db else 4, "others'": []}]
    else:  # the store was checked (opened) here, then closed before the workers started
        assert held == [{"workers": 2, "app's": 0, "others'": [0]}]
    capsys.readouterr()
    missing = str(tmp_path / "none.sqlite")
    assert main(["label", "serve", "--db", missing, "--workers", str(workers)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and len(err.strip().splitlines()) == 1 and len(held) == 1
    for engine in engines:
        engine.dispose()

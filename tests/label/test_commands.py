"""`rlhfkit label …` end to end through rlhfkit.cli.main: the commands of the issue in order,
generate with the project's decode loop on tiny-llama, one-line errors with exit 2."""
import json

import pytest
from sqlalchemy import select

from rlhfkit.cli import main
from rlhfkit.label.commands import DEFAULT_HOST, _parser
from rlhfkit.label.store import candidates, open_store, tasks


def test_generate_stores_k_candidates_with_model_and_settings(tmp_path, capsys, device):
    db = str(tmp_path / "l.sqlite")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {w}."}) + "\n"
                               for w in ("cats", "rain", "bread")))
    assert main(["label", "init", "--db", db]) == 0
    assert "admin link" in capsys.readouterr().out
    assert main(["label", "generate", "--db", db, "--policy", "tiny-llama", "--prompts",
                 str(prompts), "--k", "3", "--max-new-tokens", "8", "--temperature", "1.0",
                 "--top-k", "50", "--seed", "1", "--template", "plain", "--device", device]) == 0
    assert "added 3 tasks" in capsys.readouterr().out
    store = open_store(db)
    with store.engine.connect() as conn:
        rows = conn.execute(select(candidates.c.task_id, candidates.c.model,
                                   candidates.c.settings, candidates.c.text)).all()
        n_tasks = len(conn.execute(select(tasks.c.id)).all())
    store.close()
    assert n_tasks == 3 and len(rows) == 9  # a random tiny model's samples are distinct
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
])
def test_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty.sqlite").write_bytes(b"")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "responses": "ab"}) + "\n")
    main(["label", "init", "--db", str(tmp_path / "store.sqlite")])
    main(["label", "add-annotator", "--db", str(tmp_path / "store.sqlite"), "bob"])
    capsys.readouterr()
    code = main(["label"] + [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_serve_binds_loopback_unless_told():
    args = _parser().parse_args(["serve", "--db", "x.sqlite"])
    assert (args.host, args.port) == (DEFAULT_HOST, 8765) and DEFAULT_HOST == "127.0.0.1"

"""The leaderboard read from a store filled through the store and queue API: each judgment's
comparisons between models (ranks × candidates.model), the tag filter, the ratings and
intervals, and `rlhfkit label leaderboard` (table, JSON, errors) through the CLI."""
import json
import math
import random

import pytest

from rlhfkit.cli import main
from rlhfkit.label import queue
from rlhfkit.label.leaderboard import comparisons_by_judgment, leaderboard
from rlhfkit.label.store import (
    add_annotator,
    add_task,
    hash_token,
    init_store,
    update_settings,
)
from rlhfkit.ops.leaderboard import bootstrap_intervals, bradley_terry

GAP_3_TO_1 = 400 * math.log10(3)


def add(store, models, tag=None):
    """A task whose candidate texts name their model ("a:0", "b:1", …)."""
    with store.transaction() as conn:
        add_task(conn, (("user", f"prompt {random.random()}"),),
                 [f"{m}:{i}" for i, m in enumerate(models)], list(models), [{}] * len(models),
                 random.Random(0), tag=tag)


def judge(store, name, rank_of_model):
    """Annotator ``name`` ranks the next task served: each candidate by its model's place in
    ``rank_of_model`` (made dense within the task: 1..K)."""
    token = store.tokens.get(name) or store.tokens.setdefault(name, add_annotator(store, name))
    who = queue.annotator_by_token_hash(store, hash_token(token))
    task = queue.next_task(store, who)
    places = [rank_of_model[c["text"].split(":")[0]] for c in task["candidates"]]
    levels = sorted(set(places))
    queue.submit(store, who, task["task_id"], [levels.index(p) + 1 for p in places])


@pytest.fixture
def store(store_and_admin):
    _, store, _ = store_and_admin
    store.tokens = {}
    return store


def test_each_judgment_gives_its_pairs_between_different_models(store):
    add(store, ["a", "b", "c"])
    add(store, ["a", "a"])  # one model's two candidates: no comparison between models
    add(store, ["c", "a", "c"])
    judge(store, "x", {"a": 1, "b": 2, "c": 2})
    judge(store, "x", {"a": 1})
    judge(store, "x", {"a": 2, "c": 1})
    # slot order within a task: (a, b), (a, c), (b, c); then (c, a), (a, c) — (c, c) dropped
    assert comparisons_by_judgment(store) == [
        [("a", "b", 1.0), ("a", "c", 1.0), ("b", "c", 0.5)],
        [("c", "a", 1.0), ("a", "c", 0.0)]]


def test_ratings_and_intervals_are_the_ops_on_the_stores_comparisons(store):
    update_settings(store, overlap=4)
    add(store, ["a", "b"])
    for name, winner in (("p", "a"), ("q", "a"), ("r", "a"), ("s", "b")):
        judge(store, name, {winner: 1, ({"a", "b"} - {winner}).pop(): 2})
    grouped = comparisons_by_judgment(store)
    assert len(grouped) == 4  # four annotators' judgments of one task, not merged
    rows = leaderboard(store, n=200, seed=3)
    assert [row["model"] for row in rows] == ["a", "b"]
    assert [row["comparisons"] for row in rows] == [4, 4]
    ratings = bradley_terry([c for group in grouped for c in group])
    intervals = bootstrap_intervals(grouped, n=200, seed=3)
    for row in rows:
        assert row["elo"] == ratings[row["model"]]
        assert (row["lo"], row["hi"]) == intervals[row["model"]]
        assert row["lo"] < row["elo"] < row["hi"]
    # 3 wins to 1: 400·log10 3 = 190.85 apart, less the prior's 1.26 (ops/leaderboard.py)
    assert rows[0]["elo"] - rows[1]["elo"] == pytest.approx(GAP_3_TO_1, abs=1.5)
    no_bootstrap = leaderboard(store, n=0)
    assert [(r["lo"], r["hi"]) for r in no_bootstrap] == [(None, None), (None, None)]


def test_the_tag_prefix_keeps_only_its_tasks(store):
    add(store, ["a", "b"], tag="round-0/sample")
    add(store, ["a", "c"], tag="round-1/sample")
    add(store, ["b", "c"], tag="round-1/compare")
    add(store, ["a", "c"])  # no tag
    for _ in range(4):
        judge(store, "x", {"a": 1, "b": 2, "c": 3})
    assert comparisons_by_judgment(store, "round-1/") == [[("a", "c", 1.0)], [("b", "c", 1.0)]]
    assert comparisons_by_judgment(store, "round-0/sample") == [[("a", "b", 1.0)]]
    assert len(comparisons_by_judgment(store)) == 4
    # a prefix is a prefix, not a LIKE pattern: "_" matches only itself
    assert comparisons_by_judgment(store, "round_") == []
    rows = leaderboard(store, "round-1/", n=0)  # a and b each beat c once, never met
    assert rows[0]["elo"] == pytest.approx(rows[1]["elo"], abs=1e-9) and rows[2]["model"] == "c"
    assert leaderboard(store, "round-9/") == []


def test_the_tag_prefix_is_a_condition_of_every_query(store):
    """With a tag, each query selects by tag (no rows of other tasks read and dropped in
    Python); without one, none does."""
    from sqlalchemy import event

    add(store, ["a", "b"], tag="round-0/sample")
    add(store, ["a", "c"], tag="round-1/sample")
    judge(store, "x", {"a": 1, "b": 2, "c": 3})
    judge(store, "x", {"a": 1, "b": 2, "c": 3})
    statements = []
    event.listen(store.engine, "before_cursor_execute", lambda conn, cursor, statement, *args:
                 statements.append(statement) if statement.startswith("SELECT") else None)
    assert comparisons_by_judgment(store, "round-1/") == [[("a", "c", 1.0)]]
    assert len(statements) == 3 and all("tasks.tag" in s for s in statements), statements
    statements.clear()
    assert len(comparisons_by_judgment(store)) == 2
    assert len(statements) == 3 and not any("tag" in s for s in statements), statements


@pytest.fixture
def sqlite_db(tmp_path):
    """A SQLite store: a ≻ b ≻ c in every judgment but one, where c beats b."""
    db = str(tmp_path / "l.sqlite")
    store, _ = init_store(db)
    store.tokens = {}
    for tag in ("round-0/compare", "round-1/compare", "round-1/compare"):
        add(store, ["a", "b", "c"], tag=tag)
    add(store, ["b", "c"], tag="round-1/compare")
    for ranking in ({"a": 1, "b": 2, "c": 3},) * 3 + ({"b": 2, "c": 1},):
        judge(store, "x", ranking)
    store.close()
    return db


def test_the_command_prints_the_table_and_json(sqlite_db, capsys):
    assert main(["label", "leaderboard", "--db", sqlite_db, "--bootstrap", "100"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["rank", "model", "Elo", "95%", "interval", "comparisons"]
    assert [line.split()[:2] for line in lines] == [["1", "a"], ["2", "b"], ["3", "c"]]
    assert [line.split()[-1] for line in lines] == ["6", "7", "7"]  # a: 2 × 3 tasks
    assert main(["label", "leaderboard", "--db", sqlite_db, "--bootstrap", "100", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["a", "b", "c"]
    for row, line in zip(rows, lines):
        assert f"{row['elo']:.1f}" in line and f"{row['lo']:.1f} – {row['hi']:.1f}" in line
    assert main(["label", "leaderboard", "--db", sqlite_db, "--tag", "round-0/", "--json",
                 "--bootstrap", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["comparisons"], r["lo"]) for r in rows] == [
        ("a", 2, None), ("b", 2, None), ("c", 2, None)]
    assert main(["label", "leaderboard", "--db", sqlite_db, "--tag", "round-0/",
                 "--bootstrap", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["1", "a"]


def test_the_command_on_an_empty_store_and_bad_arguments(tmp_path, sqlite_db, capsys):
    db = str(tmp_path / "empty.sqlite")
    init_store(db)[0].close()
    assert main(["label", "leaderboard", "--db", db]) == 0
    assert capsys.readouterr().out.strip() == (
        "no judgment compares candidates of two different models")
    assert main(["label", "leaderboard", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["label", "leaderboard", "--db", sqlite_db, "--bootstrap", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rlhfkit label leaderboard: --bootstrap -1: expected a count ≥ 0"
    assert main(["label", "leaderboard", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no such file" in capsys.readouterr().err

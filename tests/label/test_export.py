"""Export: the Copeland merge of several annotators, ties as "ranks", "all bad" dropped, pairs;
and the exported files train `rlhfkit rm` and `rlhfkit dpo` as they are."""
import json
import random

import pytest

from rlhfkit.cli import main
from rlhfkit.label import queue
from rlhfkit.label.export import export_lines
from rlhfkit.label.store import add_annotator, add_task, hash_token, init_store, update_settings
from rlhfkit.trainers import common


def judge(store, name_rankings: dict, flags=()):
    """Every named annotator ranks the task they are served: ``name_rankings[name]`` gives the
    rank of each text (by text), mapped onto the order shown."""
    for name, rank_of in name_rankings.items():
        who = queue.annotator_by_token_hash(store, hash_token(store.test_tokens[name]))
        task = queue.next_task(store, who)
        ranks = [rank_of[c["text"]] for c in task["candidates"]]
        queue.submit(store, who, task["task_id"], ranks, flags=list(flags))


@pytest.fixture
def store(tmp_path):
    store, _ = init_store(str(tmp_path / "l.sqlite"))
    update_settings(store, overlap=3)
    store.test_tokens = {n: add_annotator(store, n) for n in ("a", "b", "c")}
    yield store
    store.close()


def add(store, prompt, texts):
    with store.transaction() as conn:
        add_task(conn, (("user", prompt),), texts, ["m"] * len(texts), [{}] * len(texts),
                 random.Random(0))


def test_merge_ties_all_bad_and_pairs(store):
    add(store, "p1", ["x", "y", "z"])
    add(store, "p2", ["u", "v"])
    add(store, "p3", ["s", "t"])
    # p1: a and b say x ≻ y ≻ z, c says y ≻ x ≻ z → Copeland x 2, y 1, z 0 → x, y, z strict
    judge(store, {"a": {"x": 1, "y": 2, "z": 3}, "b": {"x": 1, "y": 2, "z": 3},
                  "c": {"x": 2, "y": 1, "z": 3}})
    # p2: a ties u = v, b says u ≻ v, c says v ≻ u → margin 0: all tied → no row
    judge(store, {"a": {"u": 1, "v": 1}, "b": {"u": 1, "v": 2}, "c": {"u": 2, "v": 1}})
    # p3: two of three flag "all bad" → dropped unless asked
    judge(store, {"a": {"s": 1, "t": 2}, "b": {"s": 1, "t": 2}}, flags=["all_bad"])
    judge(store, {"c": {"s": 1, "t": 2}})
    ranked = [json.loads(line) for line in export_lines(store, "ranked")]
    assert [(r["prompt"], r["responses"], r["ranks"], r["judgments"]) for r in ranked] == [
        ("p1", ["x", "y", "z"], [1, 2, 3], 3)]
    kept = [json.loads(line) for line in export_lines(store, "ranked", keep_all_bad=True)]
    assert [r["prompt"] for r in kept] == ["p1", "p3"]
    pairs = [json.loads(line) for line in export_lines(store, "pairs")]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("x", "y"), ("x", "z"), ("y", "z")]


def test_ties_reach_the_ranked_file_and_give_no_pair(store):
    add(store, "p", ["best", "mid 1", "mid 2", "worst"])
    judge(store, {"a": {"best": 1, "mid 1": 2, "mid 2": 2, "worst": 3}})
    (row,) = [json.loads(line) for line in export_lines(store, "ranked")]
    assert row["responses"][0] == "best" and row["responses"][3] == "worst"
    assert row["ranks"] == [1, 2, 2, 3]
    pairs = [(p["chosen"], p["rejected"]) for p in
             map(json.loads, export_lines(store, "pairs"))]
    assert len(pairs) == 5 and ("mid 1", "mid 2") not in pairs and ("mid 2", "mid 1") not in pairs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A store of 24 tasks (K = 3) judged by two annotators through the queue, exported by the
    CLI in both formats: the last word decides (great ≻ okay ≻ awful), one tie per 4th task."""
    tmp = tmp_path_factory.mktemp("export")
    db = str(tmp / "l.sqlite")
    assert main(["label", "init", "--db", db, "--overlap", "2"]) == 0
    rng = random.Random(0)
    rows = []
    for i in range(24):
        filler = " ".join(rng.choices(["the", "movie", "plot", "was", "acting"], k=3))
        rows.append({"prompt": f"Review {i}:",
                     "responses": [f"{filler} {w} {i}" for w in ("great", "okay", "awful")]})
    (tmp / "cands.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["label", "import", "--db", db, "--data", str(tmp / "cands.jsonl")]) == 0
    from rlhfkit.label.store import open_store

    store = open_store(db)
    for name in ("a", "b"):
        who = queue.annotator_by_token_hash(store, hash_token(add_annotator(store, name)))
        while (task := queue.next_task(store, who)) is not None:
            word_rank = {"great": 1, "okay": 2, "awful": 3}
            if task["task_id"] % 4 == 0:
                word_rank["okay"] = 1  # tie great = okay
            ranks = [word_rank[c["text"].split()[-2]] for c in task["candidates"]]
            queue.submit(store, who, task["task_id"], ranks)
    store.close()
    for fmt in ("ranked", "pairs"):
        assert main(["label", "export", "--db", db, "--format", fmt,
                     "--out", str(tmp / f"{fmt}.jsonl")]) == 0
    return tmp


def test_rm_trains_on_the_ranked_export(exported, repo_root, tmp_path):
    rows = [json.loads(line) for line in (exported / "ranked.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and sum(r["ranks"] == [1, 1, 2] for r in rows) == 6
    out = tmp_path / "rm"
    code = main(["rm", "--config", str(repo_root / "examples/rm_tiny.yaml"), f"output_dir={out}",
                 f"data.train_path={exported / 'ranked.jsonl'}", "train.max_steps=4",
                 "train.eval_every=4", "train.save_every=0", "data.eval_fraction=0.25"])
    assert code == 0
    metrics = [row for row in common.read_metrics(out) if "eval_loss" in row]
    assert metrics and metrics[-1]["eval_loss"] > 0
    assert (out / "final" / "reward_stats.json").exists()


def test_dpo_trains_on_the_pairs_export(exported, repo_root, tmp_path):
    rows = [json.loads(line) for line in (exported / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 18 * 3 + 6 * 2  # strict lists give 3 pairs, tied ones 2
    out = tmp_path / "dpo"
    code = main(["dpo", "--config", str(repo_root / "examples/dpo_tiny.yaml"),
                 f"output_dir={out}", f"data.train_path={exported / 'pairs.jsonl'}",
                 "train.max_steps=3", "train.eval_every=0", "train.save_every=0",
                 "data.eval_fraction=0"])
    assert code == 0
    assert [row for row in common.read_metrics(out) if "loss" in row]


def test_the_rm_trainer_passes_the_exported_ties_to_the_loss(exported):
    """The ranked export read back: a tied list's grid skips its tied pair in ranking_loss."""
    import torch

    from rlhfkit.data import load_examples
    from rlhfkit.ops.ranking import ranking_loss
    from rlhfkit.trainers import reward

    examples = load_examples(str(exported / "ranked.jsonl"), "ranked")
    ranks = reward.list_ranks(examples)
    tied = [i for i, r in enumerate(ranks) if r == (1, 1, 2)]
    strict = [i for i, r in enumerate(ranks) if r == (1, 2, 3)]
    assert len(tied) == 6 and len(strict) == 18
    mask = torch.tensor([[True, True, True], [True, True, False]])
    grid = reward.rank_grid([ranks[tied[0]], (1, 2)], mask)
    assert grid.tolist() == [[1, 1, 2], [1, 2, 4]]
    # rewards [0, 5, 0] on the tied list: pair (0,1) is a tie and skipped, so only (0,2) and
    # (1,2) count, both with gap ≥ 0: loss (log 2 + sp(−5)) / 2 for list 0, sp(−1) for list 1
    rewards = torch.tensor([[0.0, 5.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    out = ranking_loss(rewards, mask, ranks=grid)
    assert out.num_pairs.item() == 3
    # sp(−5) = log(1 + e^−5) = 0.006715348489117967: ((0.693147… + 0.006715…)/2 + 0.313261…)/2
    assert out.loss.item() == pytest.approx(0.33159647602137725, abs=1e-12)

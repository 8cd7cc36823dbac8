"""Hub data sets (rlhfkit/data/readers.py): a folder laid out as a Hub data set repository, and a
data set named by its repository id, read through ``datasets.load_dataset`` with data.split /
data.eval_split / data.subset — all offline.

Offline, ``load_dataset("owner/name")`` never asks the Hub: datasets (5.x) loads the name from
its cache (HF_DATASETS_CACHE/owner___name/<config>/<version>/<hash>/: the arrow files and
dataset_info.json an earlier online load wrote). ``cache_as_hub_id`` fills that cache the way
an online load would — the same parquet builder preparing the same repository files — and only
moves the prepared folder to the repository id's place, since no network reaches the Hub here.
The last tests train DPO and a reward model on an UltraFeedback-style conversational set named
``owner/name``, with no conversion step, and get the step-for-step metrics of the same pairs
given as {"prompt", "chosen", "rejected"} strings.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.config import load_config
from rlhfkit.data import DataError, load_examples, read_records
from rlhfkit.trainers import common, dpo, reward

REPO_ID = "rlhfkit-tests/ufb-tiny"
README = """---
configs:
- config_name: default
  default: true
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: test_prefs
    path: data/test_prefs-*
- config_name: short
  data_files:
  - split: train_prefs
    path: short/train_prefs-*
---
# ufb-tiny

UltraFeedback-binarized layout in miniature: rows of data/tiny/pairs.jsonl as conversations.
"""


def ultrafeedback_row(pair: dict, index: int) -> dict:
    """A {"prompt", "chosen", "rejected"} string pair in HuggingFaceH4/ultrafeedback_binarized's
    columns: chosen/rejected are whole conversations, "messages" repeats chosen."""
    prompt = {"role": "user", "content": pair["prompt"]}
    chosen = [prompt, {"role": "assistant", "content": pair["chosen"]}]
    return {"prompt": pair["prompt"], "prompt_id": f"{index:04d}", "chosen": chosen,
            "rejected": [prompt, {"role": "assistant", "content": pair["rejected"]}],
            "messages": chosen, "score_chosen": 8.0, "score_rejected": 4.0}


@pytest.fixture(scope="module")
def pairs(repo_root) -> list[dict]:
    lines = (repo_root / "data/tiny/pairs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory, pairs) -> Path:
    """A data set repository folder as on the Hub: README.md with a configs header, parquet
    shards data/<split>-00000-of-00001.parquet, and a second subset 'short'."""
    from datasets import Dataset

    repo = tmp_path_factory.mktemp("hub") / REPO_ID.split("/")[1]
    rows = [ultrafeedback_row(pair, i) for i, pair in enumerate(pairs)]
    (repo / "data").mkdir(parents=True)
    (repo / "short").mkdir()
    Dataset.from_list(rows[:40]).to_parquet(repo / "data/train_prefs-00000-of-00001.parquet")
    Dataset.from_list(rows[40:]).to_parquet(repo / "data/test_prefs-00000-of-00001.parquet")
    Dataset.from_list(rows[:5]).to_parquet(repo / "short/train_prefs-00000-of-00001.parquet")
    (repo / "README.md").write_text(README)
    return repo


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A fresh datasets cache for this test; HF_DATASETS_OFFLINE=1 as datasets reads it."""
    import datasets

    cache = tmp_path / "hf_datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


def cache_as_hub_id(repo: Path, repo_id: str, cache: Path) -> None:
    """Leave in ``cache`` what an online ``load_dataset(repo_id)`` leaves: every split of the
    default config prepared by the parquet builder, under owner___name/."""
    import datasets

    datasets.load_dataset(str(repo))  # prepares cache/<name>/default/0.0.0/<hash>/
    owner, name = repo_id.split("/")
    assert repo.name == name  # the arrow files are named <name>-<split>.arrow
    shutil.move(cache / name, cache / f"{owner}___{name}")


def test_hub_layout_folder_reads_each_split_and_subset(hub_repo, hf_cache, pairs):
    records = read_records(str(hub_repo), "test_prefs")
    assert len(records) == len(pairs) - 40
    assert records[0].where() == f"{hub_repo}[test_prefs]:1"
    assert records[0].row["chosen"][1] == {"role": "assistant", "content": pairs[40]["chosen"]}
    examples = load_examples(str(hub_repo), "ranked", split="train_prefs")
    assert [(e.messages, e.responses) for e in examples] == [
        ((("user", p["prompt"]),), (p["chosen"], p["rejected"])) for p in pairs[:40]]
    assert len(read_records(str(hub_repo), "train_prefs", subset="short")) == 5
    assert read_records(str(hub_repo), "train_prefs", "short")[0].source == \
        f"{hub_repo}[short/train_prefs]"
    assert len(read_records(str(hub_repo), "train_prefs[:3]")) == 3  # a split slice


def test_jsonl_repo_without_readme_takes_splits_from_file_names(tmp_path, hf_cache):
    repo = tmp_path / "plain-repo"
    (repo / "data").mkdir(parents=True)
    for split, n in (("train", 3), ("test", 2)):
        rows = [{"prompt": f"q{i}", "completion": f"c{i}", "label": i % 2 == 0} for i in range(n)]
        (repo / f"data/{split}-00000-of-00001.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in rows))
    train = load_examples(str(repo), "unpaired")
    assert [(e.completion, e.label) for e in train] == [("c0", True), ("c1", False), ("c2", True)]
    assert len(load_examples(str(repo), "unpaired", split="test")) == 2


def test_repo_id_loads_offline_from_the_datasets_cache(hub_repo, hf_cache, pairs):
    cache_as_hub_id(hub_repo, REPO_ID, hf_cache)
    records = read_records(REPO_ID, "train_prefs")
    assert len(records) == 40 and records[2].where() == f"{REPO_ID}[train_prefs]:3"
    (example,) = load_examples(REPO_ID, "ranked", split="test_prefs")[:1]
    assert example.responses == (pairs[40]["chosen"], pairs[40]["rejected"])
    prompts = load_examples(REPO_ID, "prompt", split="train_prefs")  # what PPO/GRPO read
    assert [p.messages for p in prompts] == [(("user", pair["prompt"]),) for pair in pairs[:40]]
    sft = load_examples(REPO_ID, "sft", split="train_prefs")  # its "messages" column
    assert [e.response for e in sft] == [pair["chosen"] for pair in pairs[:40]]


def test_hub_errors_are_one_line_data_errors(hub_repo, hf_cache, tmp_path):
    cache_as_hub_id(hub_repo, REPO_ID, hf_cache)
    cases = [
        (("rlhfkit-tests/not-cached", "train"), "rlhfkit-tests/not-cached: not a local file or "
         "folder, and as a Hub data set name (split 'train'): Couldn't reach"),
        (("rlhfkit-tests/not-cached", "train"), "(offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is "
         "set, so a Hub name loads only from the datasets cache, HF_DATASETS_CACHE)"),
        ((REPO_ID, "nope"), 'Unknown split "nope"'),
        ((str(hub_repo), "nope"),
         f"{hub_repo}: a Hub data set folder (split 'nope'): Unknown split \"nope\""),
        ((str(hub_repo), "train_prefs", "missing"), "(split 'train_prefs', subset 'missing'): "),
        ((str(tmp_path / "empty"),), f"{tmp_path / 'empty'}: a Hub data set folder (split "),
    ]
    (tmp_path / "empty").mkdir()  # a folder with no data files
    for args, message in cases:
        with pytest.raises(DataError) as err:
            read_records(*args)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    # A path with a data file suffix or two slashes is a missing file, never a Hub name.
    for path in ("none.jsonl", "data/tiny/none", str(tmp_path / "x.jsonl.gz")):
        with pytest.raises(DataError, match="data file not found"):
            read_records(path)


def test_malformed_hub_row_names_its_row_number(hub_repo, hf_cache, tmp_path):
    from datasets import Dataset

    repo = tmp_path / "bad-repo"
    (repo / "data").mkdir(parents=True)
    good = ultrafeedback_row({"prompt": "q", "chosen": "a", "rejected": "b"}, 0)
    bad = dict(good, rejected=[good["chosen"][0]])  # the rejected reply is missing
    Dataset.from_list([good, good, bad]).to_parquet(repo / "data/train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"bad-repo\[train\]:3: field 'rejected': expected the "
                                        r"conversation to end in an assistant reply, got user"):
        load_examples(str(repo), "ranked")


def test_cli_names_a_missing_hub_data_set_in_one_line(hf_cache, tmp_path, capsys):
    code = main(["dpo", "data.train_path=rlhfkit-tests/not-cached", "data.split=train_prefs",
                 f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "rlhfkit-tests/not-cached: not a local file or folder" in err
    assert "Traceback" not in err


def test_hf_datasets_offline_env_is_respected(hub_repo, tmp_path, repo_root):
    """HF_DATASETS_OFFLINE=1 and HF_DATASETS_CACHE in a fresh process's environment: the
    repository id is served from that cache, an unknown one fails with the offline hint."""
    script = ("import sys\n"
              "from rlhfkit.data import DataError, read_records\n"
              f"print(len(read_records({REPO_ID!r}, 'train_prefs')))\n"
              "try:\n"
              "    read_records('rlhfkit-tests/not-cached')\n"
              "except DataError as err:\n"
              "    print(err)\n")
    cache = tmp_path / "env_cache"
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update(HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(cache))
    prepare = f"import datasets; datasets.load_dataset({str(hub_repo)!r})"
    subprocess.run([sys.executable, "-c", prepare], env=env, check=True, capture_output=True)
    shutil.move(cache / hub_repo.name, cache / f"{REPO_ID.split('/')[0]}___{hub_repo.name}")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, cwd=repo_root, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "40"
    assert "offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set" in lines[1]


def test_dpo_trains_on_a_conversational_hub_set_named_by_its_id(hub_repo, hf_cache, pairs,
                                                                 repo_root, tmp_path):
    """DPO on ``owner/name`` (conversational UltraFeedback layout, train_prefs, eval on
    test_prefs) takes the same steps as DPO on the same pairs as plain strings."""
    cache_as_hub_id(hub_repo, REPO_ID, hf_cache)
    strings = tmp_path / "pairs.jsonl"
    strings.write_text("".join(json.dumps(p) + "\n" for p in pairs[:40]))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(p) + "\n" for p in pairs[40:]))
    common_keys = ["train.max_steps=4", "train.batch_size=4", "train.warmup_steps=0",
                   "train.save_every=0", "train.eval_every=0", "data.max_rows=16"]
    hub = tmp_path / "hub"
    dpo.run(load_config(dpo.DPOConfig, str(repo_root / "examples/dpo_tiny.yaml"), [
        f"output_dir={hub}", f"data.train_path={REPO_ID}", "data.split=train_prefs",
        f"data.eval_path={REPO_ID}", "data.eval_split=test_prefs", *common_keys]))
    plain = tmp_path / "plain"
    dpo.run(load_config(dpo.DPOConfig, str(repo_root / "examples/dpo_tiny.yaml"), [
        f"output_dir={plain}", f"data.train_path={strings}", f"data.eval_path={held}",
        *common_keys]))
    assert_same_steps(hub, plain, ("loss", "eval_loss", "reward_margin", "eval_reward_margin"))
    rows = common.read_metrics(hub)
    assert rows[0]["eval_loss"] == pytest.approx(0.6931472, abs=1e-6)  # policy == reference
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]  # held-out pairs: the policy learned


def test_reward_model_trains_on_a_conversational_hub_set_named_by_its_id(
        hub_repo, hf_cache, pairs, repo_root, tmp_path):
    cache_as_hub_id(hub_repo, REPO_ID, hf_cache)
    strings = tmp_path / "pairs.jsonl"
    strings.write_text("".join(json.dumps(p) + "\n" for p in pairs[:40]))
    common_keys = ["train.max_steps=4", "train.batch_size=8", "train.warmup_steps=0",
                   "train.save_every=0", "train.eval_every=0", "data.eval_fraction=0.2"]
    hub = tmp_path / "hub"
    reward.run(load_config(reward.RMConfig, str(repo_root / "examples/rm_tiny.yaml"), [
        f"output_dir={hub}", f"data.train_path={REPO_ID}", "data.split=train_prefs",
        *common_keys]))
    plain = tmp_path / "plain"
    reward.run(load_config(reward.RMConfig, str(repo_root / "examples/rm_tiny.yaml"), [
        f"output_dir={plain}", f"data.train_path={strings}", *common_keys]))
    assert_same_steps(hub, plain, ("loss", "eval_loss", "pair_accuracy", "eval_pair_accuracy"))
    rows = [row for row in common.read_metrics(hub) if "loss" in row]
    assert len(rows) == 4 and rows[-1]["loss"] < rows[0]["loss"]


def assert_same_steps(a: Path, b: Path, keys: tuple) -> None:
    rows_a, rows_b = common.read_metrics(a), common.read_metrics(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    compared = 0
    for row_a, row_b in zip(rows_a, rows_b):
        for key in keys:
            assert (key in row_a) == (key in row_b), key
            if key in row_a:
                assert row_a[key] == pytest.approx(row_b[key], rel=1e-6, abs=1e-7), key
                compared += 1
    assert compared >= len(rows_a)

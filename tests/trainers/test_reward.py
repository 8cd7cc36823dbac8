"""Reward-model stage on tiny-llama: padding, K-list masking, learning, errors, LoRA head,
resume, and ``rlhfkit score`` end to end. The loss's hand values: tests/ops/test_ranking.py."""
import json
import random

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.config import load_config
from rlhfkit.data import RankedExample, left_pad
from rlhfkit.models import load_scalar_model
from rlhfkit.models.forward import sequence_scores
from rlhfkit.models.scoring import RewardScorer, load_reward_stats
from rlhfkit.ops.ranking import ranking_loss
from rlhfkit.trainers import common, reward

FILLER = ["the", "movie", "plot", "was", "acting", "film", "story", "very", "quite", "really"]
RANKED_WORDS = ["great", "okay", "awful"]  # best → worst: the last word decides


def toy_rows(n: int, seed: int) -> list[dict]:
    """Separable lists: neutral filler, then 'great' ≻ 'okay' ≻ 'awful'; K = 2 and 3 mixed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = RANKED_WORDS if i % 2 else [RANKED_WORDS[0], RANKED_WORDS[2]]
        rows.append({"prompt": "Review:", "responses": [
            " ".join(rng.choices(FILLER, k=rng.randint(2, 5)) + [w]) for w in words]})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def rm_config(tmp_path, train_path, eval_path="", *overrides):
    base = [f"output_dir={tmp_path / 'run'}", "model.name=tiny-llama", f"data.train_path={train_path}",
            f"data.eval_path={eval_path}", "data.template=plain", "data.max_prompt_length=8",
            "data.max_length=32", "train.learning_rate=3e-3", "train.batch_size=8",
            "train.warmup_steps=2", "train.seed=0"]
    return load_config(reward.RMConfig, None, base + list(overrides))


@pytest.fixture(scope="module")
def trained_on(tmp_path_factory):
    """A tiny RM trained on the separable toy set, once per device (module-wide: several tests
    read it)."""
    runs = {}

    def train(on_device: tuple) -> dict:
        tmp = tmp_path_factory.mktemp("rm")
        train_path = write_jsonl(tmp / "train.jsonl", toy_rows(48, seed=1))
        held = write_jsonl(tmp / "eval.jsonl", toy_rows(16, seed=2))
        config = rm_config(tmp, train_path, held, *on_device, "train.max_steps=30",
                           "train.eval_every=30")
        last = reward.run(config)
        return {"dir": tmp / "run", "eval": held, "last": last, "config": config}

    return lambda on_device: runs.get(on_device) or runs.setdefault(on_device, train(on_device))


@pytest.fixture
def trained(trained_on, on_device):
    return trained_on(on_device)


def test_score_is_padding_invariant_left_vs_right(tokenizer, device):
    """The score is read at the last real token, wherever the padding sits."""
    model = load_scalar_model("tiny-llama", tokenizer).to(device).eval()
    data = load_config(reward.RMConfig, None, ["data.template=plain"]).data
    example = RankedExample((("user", "Review:"),), ("a b c d e f great", "awful", "the plot okay"))
    seqs = reward.encode_lists([example], tokenizer, data)[0]
    with torch.no_grad():
        right, _ = reward.score_lists(model, [seqs], tokenizer.pad_token_id, device)  # (1, 3)
        ids, mask = left_pad([s.prompt_ids + s.response_ids for s in seqs], tokenizer.pad_token_id)
        left = sequence_scores(model, ids.to(device), mask.to(device))
        rows = [torch.tensor([s.prompt_ids + s.response_ids], device=device) for s in seqs]
        alone = [sequence_scores(model, row, torch.ones_like(row, dtype=torch.bool))
                 for row in rows]
    torch.testing.assert_close(right[0], left, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, torch.cat(alone), rtol=0, atol=1e-5)


def test_shared_prompt_scores_equal_one_row_per_response(tokenizer, device):
    """rm.share_prompt packs a list's responses into one row: the same rewards (K = 2 and 4)."""
    model = load_scalar_model("tiny-llama", tokenizer).to(device)
    torch.nn.init.normal_(model.score.weight)
    data = load_config(reward.RMConfig, None, ["data.template=plain"]).data
    examples = [RankedExample((("user", "p q r"),), ("good", "bad")),
                RankedExample((("user", "q"),), ("w x great", "w okay", "meh", "awful awful"))]
    lists = reward.encode_lists(examples, tokenizer, data)
    rows, mask = reward.score_lists(model, lists, tokenizer.pad_token_id, device, False)
    packed, packed_mask = reward.score_lists(model, lists, tokenizer.pad_token_id, device, True)
    assert packed_mask.tolist() == mask.tolist()
    torch.testing.assert_close(packed, rows, rtol=0, atol=1e-5)


def test_score_lists_masks_short_lists(tokenizer, device):
    """K = 2 and K = 4 in one forward pass: padded slots are masked and cannot move the loss."""
    model = load_scalar_model("tiny-llama", tokenizer).to(device)
    data = load_config(reward.RMConfig, None, ["data.template=plain"]).data
    examples = [RankedExample((("user", "p"),), ("good", "bad")),
                RankedExample((("user", "q"),), ("w x great", "w okay", "meh", "awful awful"))]
    lists = reward.encode_lists(examples, tokenizer, data)
    rewards, list_mask = reward.score_lists(model, lists, tokenizer.pad_token_id, device)  # (2, 4)
    assert list_mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert rewards[0, 2:].tolist() == [0.0, 0.0]
    each = [reward.score_lists(model, [seqs], tokenizer.pad_token_id, device)[0][0]
            for seqs in lists]
    torch.testing.assert_close(rewards[0, :2], each[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(rewards[1], each[1], rtol=0, atol=1e-5)
    # Batched loss = mean of the per-list losses (each list weighs 1, whatever its K).
    batched = ranking_loss(rewards, list_mask).loss
    separate = [ranking_loss(r[None], torch.ones(1, len(r), dtype=torch.bool, device=device)).loss
                for r in each]
    torch.testing.assert_close(batched, (separate[0] + separate[1]) / 2, rtol=0, atol=1e-6)
    batched.backward()  # padded slots get no gradient path into the model output
    metrics = reward.finish_metrics(
        {k: float(v) for k, v in reward.list_sums(rewards, list_mask, max_k=4).items()})
    assert set(metrics) >= {"loss", "pair_accuracy", "mean_margin", "reward_mean", "reward_std",
                            "reward_rank_1", "reward_rank_4"}
    assert metrics["reward_rank_4"] == pytest.approx(float(rewards[1, 3].detach()), abs=1e-6)


def test_trained_tiny_rm_separates_toy_set(trained):
    rows = common.read_metrics(trained["dir"])
    assert rows[-1]["eval_pair_accuracy"] == 1.0
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["reward_rank_1"] > rows[-1]["reward_rank_2"] > rows[-1]["reward_rank_3"]
    stats = load_reward_stats(trained["dir"] / "final")
    assert stats["source"] == "eval" and stats["std"] > 0
    assert (stats["template"], stats["max_length"]) == ("plain", 32)


def test_final_loads_with_its_trained_head(trained, tokenizer, device):
    """PPO loads final/ with load_scalar_model + sequence_scores on token ids: same scores."""
    final = trained["dir"] / "final"
    scorer = RewardScorer.from_pretrained(final, device=device, dtype="float32")
    fresh = load_scalar_model("tiny-llama", tokenizer)
    model = load_scalar_model(str(final), tokenizer).eval()
    assert not torch.equal(model.score.weight, fresh.score.weight)
    ids = (tokenizer("Review:", add_special_tokens=False)["input_ids"]
           + tokenizer(" the plot great", add_special_tokens=False)["input_ids"]
           + [tokenizer.eos_token_id])  # prompt and response tokenised apart, + EOS: as encode()
    with torch.no_grad():
        direct = sequence_scores(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
    via_scorer = scorer(["Review:"], [" the plot great"])
    assert via_scorer[0] == pytest.approx(float(direct[0]), abs=1e-4)
    good, bad = scorer(["Review:"] * 2, ["the film was great", "the film was awful"])
    assert good > bad


def test_score_cli_end_to_end(trained, tmp_path, capsys, device):
    out = tmp_path / "scores.jsonl"
    code = main(["score", "--model", str(trained["dir"] / "final"), "--data", trained["eval"],
                 "--output", str(out), "--device", device])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["scores"]) in (2, 3) for r in rows)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["pair_accuracy"] == 1.0 and summary["rows"] == 16
    single = write_jsonl(tmp_path / "single.jsonl", [{"prompt": "Review:", "response": "great"}])
    assert main(["score", "--model", str(trained["dir"] / "final"), "--data", single,
                 "--output", str(tmp_path / "one.jsonl"), "--device", device]) == 0
    assert set(json.loads((tmp_path / "one.jsonl").read_text())) == {"score"}


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "p", "responses": ["same", "other", "same"]}, "tie"),
    ({"prompt": "p", "responses": ["only one"]}, "'responses'"),
    ({"prompt": "p", "chosen": "a"}, "'rejected'"),
])
def test_malformed_lists_stop_the_stage_naming_the_row(tmp_path, capsys, row, expected):
    rows = toy_rows(4, seed=0) + [row]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code = main(["rm", f"output_dir={tmp_path / 'run'}", "model.name=tiny-llama",
                 f"data.train_path={path}", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:5" in err and expected in err


def test_lora_keeps_score_head_trainable(tmp_path, tokenizer, on_device):
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(16, seed=3))
    config = rm_config(tmp_path, train, "", *on_device, "model.lora.enabled=true", "model.lora.r=4",
                       "train.max_steps=2", "data.eval_fraction=0")
    run_ = common.start_run(config)
    model = reward.build_model(run_, config, tokenizer)
    head = [n for n, p in model.named_parameters() if p.requires_grad and "score" in n]
    assert head, "the score head must stay trainable under LoRA"
    reward.run(config)
    final = load_scalar_model(str(tmp_path / "run" / "final"), tokenizer)
    base = load_scalar_model("tiny-llama", tokenizer)
    assert not torch.equal(final.score.weight, base.score.weight)  # the trained head was merged
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_config.json").exists()


def test_freeze_layers_trains_only_the_top(tmp_path, tokenizer):
    config = rm_config(tmp_path, "x.jsonl", "", "rm.freeze_layers=1")
    run_ = common.start_run(config)
    model = reward.build_model(run_, config, tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable and "model.norm.weight" in trainable
    assert not any(n.startswith(("model.embed_tokens", "model.layers.0.")) for n in trainable)
    assert any(n.startswith("model.layers.1.") for n in trainable)


def test_head_learning_rate_applies_to_the_score_head_only(tmp_path, tokenizer):
    config = rm_config(tmp_path, "x.jsonl", "", "rm.head_learning_rate=0.05",
                       "rm.freeze_layers=1")
    model = reward.build_model(common.start_run(config), config, tokenizer)
    groups = reward.make_optimizer(model, config).param_groups
    assert [g["lr"] for g in groups] == [3e-3, 0.05]
    assert groups[1]["params"] == [model.score.weight]
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert len(groups[0]["params"]) + 1 == n_trainable


class Killed(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, on_device):
    """Kill after step 4 (checkpoint at 3), resume=true: metrics.jsonl equals a clean run's."""
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(24, seed=4))
    args = [*on_device, "train.max_steps=6", "train.save_every=3", "train.eval_every=2",
            "data.eval_fraction=0.25"]
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    reward.run(rm_config(clean_dir, train, "", *args))
    real_step, calls = reward.train_step, []

    def dying_step(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise Killed
        return real_step(*a, **k)

    monkeypatch.setattr(reward, "train_step", dying_step)
    with pytest.raises(Killed):
        reward.run(rm_config(killed_dir, train, "", *args))
    monkeypatch.setattr(reward, "train_step", real_step)
    assert [r["step"] for r in common.read_metrics(killed_dir / "run")] == [1, 2, 3, 4]
    reward.run(rm_config(killed_dir, train, "", *args, "resume=true"))
    clean = (clean_dir / "run" / "metrics.jsonl").read_text()
    assert (killed_dir / "run" / "metrics.jsonl").read_text() == clean
    assert json.loads((killed_dir / "run" / "final" / "reward_stats.json").read_text()) == \
        json.loads((clean_dir / "run" / "final" / "reward_stats.json").read_text())


def test_two_processes_equal_one(repo_root, tmp_path):
    """torchrun × 2 (gloo) on rm_tiny (K = 3 and 4 mixed, so processes hold different numbers
    of responses): the same loss and metrics as one process, because every list weighs
    1 / (lists in the global batch) counted over both processes."""
    import os
    import subprocess
    import sys

    def launch(out, nproc):
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] \
            if nproc > 1 else [sys.executable]
        cmd = prefix + ["-m", "rlhfkit", "rm", "--config", "examples/rm_tiny.yaml",
                        f"output_dir={out}", "train.max_steps=3", "train.eval_every=3"]
        result = subprocess.run(cmd, cwd=repo_root, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return common.read_metrics(out)

    one, two = launch(tmp_path / "one", 1), launch(tmp_path / "two", 2)
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "pair_accuracy", "mean_margin", "reward_mean", "reward_std",
                    "reward_rank_1", "reward_rank_4", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert one[-1]["eval_pair_accuracy"] == pytest.approx(two[-1]["eval_pair_accuracy"], abs=1e-9)
    assert one[-1]["eval_loss"] == pytest.approx(two[-1]["eval_loss"], abs=1e-5)

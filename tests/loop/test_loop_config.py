"""LoopConfig (rlhfkit/loop/config.py): composed parts, the stages' sections checked at load time
with their dotted keys, the examples load, and a user error is one line, exit 2."""
import subprocess
import sys

import pytest

from rlhfkit.config import ConfigError, build, load_config
from rlhfkit.loop.config import LoopConfig, stage_config
from rlhfkit.online.ppo import PPOConfig
from rlhfkit.trainers.reward import RMConfig

BASE = {"data": {"train_path": "prompts.jsonl"},
        "judge": {"reward": {"function": "rlhfkit.online.rewards:compressibility"}}}


def test_examples_load(repo_root):
    tiny = load_config(LoopConfig, str(repo_root / "examples/loop_tiny.yaml"))
    assert (tiny.rounds, tiny.annotator, tiny.algorithm) == (2, "simulated", "ppo")
    imdb = load_config(LoopConfig, str(repo_root / "examples/loop_imdb.yaml"))
    assert imdb.rounds == 3 and imdb.model.lora.enabled
    # the hidden ground truth is not what the policy's reward model trains from
    assert imdb.judge.reward.function or imdb.judge.reward.model_path
    assert imdb.judge.temperature > 0 or imdb.judge.flip_prob > 0


@pytest.mark.parametrize("values, message", [
    ({"ppo": {"train": {"max_stepz": 3}}}, "unknown key 'ppo.train.max_stepz'"),
    ({"rm": {"train": {"learning_rate": -1}}}, "rm.train.learning_rate=-1"),
    ({"labels_per_round": 9, "prompts_per_round": 8}, "labels_per_round=9"),
    ({"judge": {"reward": {"function": ""}}}, "judge.reward.function"),
    ({"selection": "greedy"}, "selection='greedy'"),
    ({"selection": "ensemble", "ensemble_size": 1}, "ensemble_size=1"),
    ({"ensemble_l2": 0}, "ensemble_l2=0"),
    ({"later_lr_scale": 0}, "later_lr_scale=0"),
    ({"algorithm": "grpo", "grpo": {"grpo": {"num_generations": 0}}}, "grpo.grpo.num_generations"),
])
def test_bad_values_name_their_key(values, message):
    from rlhfkit.config import merge

    with pytest.raises(ConfigError) as err:
        build(LoopConfig, merge(BASE, values))
    assert message in str(err.value)


def test_human_annotator_needs_no_judge():
    config = build(LoopConfig, {"data": {"train_path": "p.jsonl"}, "annotator": "human"})
    assert config.judge.reward.function == ""


def test_stage_config_fills_what_the_loop_decides():
    config = build(LoopConfig, {**BASE, "model": {"lora": {"enabled": True}},
                                "ppo": {"train": {"max_steps": 3}, "model": {"dtype": "float32"}},
                                "rm": {"model": {"name": "tiny-llama"}}})
    ppo = stage_config(config, "ppo", "out/p", "round-0/final", "pool.jsonl", "rm/final")
    assert isinstance(ppo, PPOConfig)
    assert (ppo.output_dir, ppo.resume, ppo.model.name, ppo.reward.model_path) == \
        ("out/p", True, "round-0/final", "rm/final")
    assert ppo.model.lora.enabled and ppo.model.dtype == "float32"  # loop part + own section
    assert (ppo.data.train_path, ppo.data.eval_path, ppo.train.max_steps) == ("pool.jsonl", "", 3)
    warm = stage_config(config, "rm", "out/rm", "round-0/rm/final", "t.jsonl", "h.jsonl")
    scratch = stage_config(config, "rm", "out/rm", "", "t.jsonl", "")
    assert isinstance(warm, RMConfig)
    assert (warm.model.name, scratch.model.name) == ("round-0/rm/final", "tiny-llama")
    assert (warm.data.eval_path, warm.data.eval_fraction, scratch.data.eval_path) == \
        ("h.jsonl", 0.0, "")


def test_cli_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "loop.yaml"
    bad.write_text("data:\n  train_path: p.jsonl\nk: 1\n")
    done = subprocess.run([sys.executable, "-m", "rlhfkit", "loop", "--config", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rlhfkit loop: config error: k=1 is invalid: expected a number >= 2"]


def test_compare_prompts_beyond_the_eval_file_is_an_error(repo_root, tmp_path):
    """The compare prompts are the first compare_prompts rows of data.eval_path: asking for more
    than it holds is a config error naming both, not a silently shorter comparison."""
    from rlhfkit.loop.rounds import load_prompts

    held = tmp_path / "held.jsonl"
    held.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"}\n')
    values = {**BASE, "data": {"train_path": str(repo_root / "data/tiny/prompts.jsonl"),
                               "eval_path": str(held)}}
    assert len(load_prompts(build(LoopConfig, {**values, "compare_prompts": 3}))
               .compare_messages) == 3
    with pytest.raises(ConfigError, match=r"compare_prompts=4, but data.eval_path \(.*held"
                                          r"\.jsonl\) has 3 prompts"):
        load_prompts(build(LoopConfig, {**values, "compare_prompts": 4}))

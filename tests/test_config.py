"""Config loading, overrides, validation messages and --help (rlhfkit/config.py)."""
import dataclasses

import pytest

from rlhfkit.config import ConfigError, help_lines, load_config, parse_overrides
from rlhfkit.trainers.sft import SFTConfig


def test_yaml_then_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: tiny-llama\ntrain:\n  max_steps: 5\n  learning_rate: 1e-4\n")
    config = load_config(SFTConfig, str(path), ["train.max_steps=3", "model.lora.enabled=true",
                                                "model.lora.target_modules=q_proj,v_proj"])
    assert config.train.max_steps == 3
    assert config.train.learning_rate == 1e-4  # YAML's "1e-4" string becomes a float
    assert config.model.lora.enabled is True
    assert config.model.lora.target_modules == ("q_proj", "v_proj")


def test_mixed_precision_values_survive_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: bf16\n")
    assert load_config(SFTConfig, str(path)).train.mixed_precision == "bf16"
    assert load_config(SFTConfig, None, ["train.mixed_precision=fp32"]).train.mixed_precision == "fp32"


def test_config_is_frozen():
    config = load_config(SFTConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.max_steps = 4


@pytest.mark.parametrize("override, message", [
    ("train.lr_scheduler=fast", "train.lr_scheduler='fast' is invalid: expected one of 'cosine'"),
    ("train.batch_size=0", "train.batch_size=0 is invalid: expected a number >= 1"),
    ("train.max_steps=abc", "train.max_steps='abc' is invalid: expected an integer"),
    ("model.lora.r=0", "model.lora.r=0 is invalid: expected a number >= 1"),
    ("model.dtype=int8", "model.dtype='int8' is invalid: expected one of 'auto'"),
    ("resume=maybe", "resume='maybe' is invalid: expected true or false"),
    ("train.max_step=3", "unknown key 'train.max_step': allowed keys at this level are"),
    ("data.max_length=10", "data.max_length=10 is invalid: expected > data.max_prompt_length"),
    ("train", "override 'train' is invalid: expected key=value"),
])
def test_invalid_values_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, [override])
    assert message in str(err.value)


# Keys that moved under their stage's part (issue 12): every old place fails with one line
# naming the new one, from a YAML file and from a command-line override alike.
MOVED = [("rm", "share_prompt", "false"), ("rm", "margin", "0.5"), ("rm", "center_coef", "0.1"),
         ("rm", "freeze_layers", "1"), ("rm", "head_learning_rate", "0.01"),
         ("rm", "eval_batch_size", "64"), ("rm", "stats_rows", "8"),
         ("sft", "sample_prompts", "[hi]"), ("sft", "sample_max_new_tokens", "8")]


@pytest.mark.parametrize("stage, key, value", MOVED)
def test_a_moved_key_names_its_new_place(tmp_path, stage, key, value):
    cls = _stage_config(stage)
    assert cls.MOVED_KEYS[key] == f"{stage}.{key}"
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  max_steps: 2\n{key}: {value}\n")
    for source, overrides in ((str(path), []), (None, [f"{key}={value}"])):
        with pytest.raises(ConfigError) as err:
            load_config(cls, source, overrides)
        assert str(err.value) == f"{key} moved to {stage}.{key}"
    path.write_text(f"train:\n  max_steps: 2\n{stage}:\n  {key}: {value}\n")
    from_yaml = load_config(cls, str(path))
    from_cli = load_config(cls, None, [f"{stage}.{key}={value}"])
    assert getattr(getattr(from_yaml, stage), key) == getattr(getattr(from_cli, stage), key)
    assert getattr(getattr(from_cli, stage), key) != getattr(getattr(cls(), stage), key)


def test_every_moved_key_is_tested_and_the_cli_names_the_new_place(capsys):
    from rlhfkit.cli import STAGES, main

    moved = {(stage, key) for stage in STAGES
             for key in getattr(_stage_config(stage), "MOVED_KEYS", {})}
    assert moved == {(stage, key) for stage, key, _ in MOVED}
    assert main(["rm", "share_prompt=false"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "rlhfkit rm: config error: share_prompt moved to rm.share_prompt"]
    with pytest.raises(SystemExit):
        main(["rm", "--help"])
    text = capsys.readouterr().out
    for _, key, _ in MOVED[:7]:
        assert f"  rm.{key} = " in text and f"\n  {key} = " not in text


def test_unreadable_config_file():
    with pytest.raises(ConfigError, match="cannot read config file /nonexistent.yaml"):
        load_config(SFTConfig, "/nonexistent.yaml")


def test_parse_overrides_nests_and_types():
    assert parse_overrides(["a.b=3", "a.c=x", "d=true"]) == {"a": {"b": 3, "c": "x"}, "d": True}


def test_help_lists_every_key_with_default_and_doc():
    text = "\n".join(help_lines(SFTConfig))
    for key in ("output_dir", "model.name", "model.lora.r", "data.train_path",
                "train.learning_rate", "train.lr_scheduler", "resume"):
        assert f"  {key} = " in text
    assert "'cosine' [one of 'cosine', 'linear', 'constant']" in text
    assert "Peak learning rate." in text


def test_cli_help_and_config_error_exit(capsys):
    from rlhfkit.cli import main

    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    assert "train.warmup_steps = 0" in capsys.readouterr().out
    assert main(["sft", "train.batch_size=-1"]) == 2
    assert "train.batch_size=-1 is invalid" in capsys.readouterr().err


# "0 = off" means the same everywhere: a key that accepts 0 either switches its feature off
# (and its help says so) or rejects 0 when 0 would silently break training (issue 12).
ONLINE = ["reward.function=rlhfkit.online.rewards:char_share"]


def _stage_config(stage: str):
    from rlhfkit.cli import STAGES
    import importlib

    module_name, class_name = STAGES[stage]
    return getattr(importlib.import_module(module_name), class_name)


@pytest.mark.parametrize("stage, key", [
    ("ppo", "reward.reward_clip"), ("ppo", "reward.missing_eos_penalty"),
    ("ppo", "rollout.top_k"), ("ppo", "ppo.kl_coef"), ("ppo", "ppo.entropy_coef"),
    ("ppo", "rollout.tis_cap"), ("grpo", "rollout.tis_cap"),
    ("grpo", "grpo.beta"), ("grpo", "reward.reward_clip"),
    ("sft", "train.max_grad_norm"), ("sft", "train.weight_decay"), ("sft", "model.lora.dropout"),
    ("sft", "data.eval_fraction"), ("rm", "rm.center_coef"), ("dpo", "dpo.label_smoothing"),
])
def test_zero_means_off_is_accepted_and_documented(stage, key):
    cls = _stage_config(stage)
    config = load_config(cls, None, (ONLINE if stage in ("ppo", "grpo") else []) + [f"{key}=0"])
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    assert node == 0
    line = next(line for line in help_lines(cls) if line.startswith(f"  {key} = "))
    assert "0 = off" in line, line


@pytest.mark.parametrize("stage, key", [
    ("ppo", "ppo.target_kl"), ("ppo", "ppo.clip_eps"), ("ppo", "ppo.clip_eps_value"),
    ("grpo", "grpo.clip_eps"), ("dpo", "dpo.beta"), ("sft", "model.lora.alpha"),
    ("sft", "train.num_epochs"),
])
def test_zero_that_cannot_mean_off_is_rejected(stage, key):
    cls = _stage_config(stage)
    extra = ONLINE if stage in ("ppo", "grpo") else []
    with pytest.raises(ConfigError, match=rf"{key}=0(\.0)? is invalid: expected a number > 0"):
        load_config(cls, None, extra + [f"{key}=0"])
    line = next(line for line in help_lines(cls) if line.startswith(f"  {key} = "))
    assert "[a number > 0" in line or "[a number in (0," in line, line

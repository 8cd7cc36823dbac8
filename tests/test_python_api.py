"""The Python API (rlhfkit/__init__.py): the CLI's code path with in-memory objects.

Each in-memory object must give the run its file or name gives: the same metrics.jsonl, row
for row. Errors are the CLI's one-line messages, raised.
"""
import json

import pytest

import rlhfkit
from rlhfkit.cli import main
from rlhfkit.trainers import common


def rows(repo_root, name: str) -> list[dict]:
    return [json.loads(line) for line in (repo_root / "data/tiny" / name).read_text().splitlines()
            if line.strip()]


def tiny(repo_root, stage: str, out, **parts) -> dict:
    """examples/<stage>_tiny.yaml as a dict, with output_dir and parts overridden."""
    import yaml

    config = yaml.safe_load((repo_root / f"examples/{stage}_tiny.yaml").read_text())
    config["output_dir"] = str(out)
    for part, values in parts.items():
        config[part] = {**config.get(part, {}), **values} if isinstance(values, dict) else values
    return config


def test_sft_list_of_dicts_equals_the_cli_on_the_file(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(repo_root)
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    assert main(["sft", "--config", "examples/sft_tiny.yaml", f"output_dir={cli_out}",
                 "train.max_steps=3", "train.report_to="]) == 0
    config = tiny(repo_root, "sft", api_out, train={"max_steps": 3, "report_to": []},
                  data={"train_path": ""})
    result = rlhfkit.sft(config, train_dataset=rows(repo_root, "sft.jsonl"))
    assert common.read_metrics(api_out) == common.read_metrics(cli_out)
    assert result.history == common.read_metrics(cli_out)
    assert result.metrics == result.history[-1] and result.metrics["step"] == 3
    assert result.output_dir == api_out and result.final_dir == api_out / "final"
    assert result.summary == {k: v for k, v in result.metrics.items() if k != "step"}
    card = (result.final_dir / "README.md").read_text()
    assert f"- train: `in memory: a list of {len(rows(repo_root, 'sft.jsonl'))} rows`" in card


def test_rm_dataset_and_loaded_model_equal_the_yaml_path(repo_root, tmp_path, tokenizer):
    import datasets

    from rlhfkit.models import load_scalar_model

    import yaml

    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(tiny(
        repo_root, "rm", tmp_path / "path", train={"max_steps": 2},
        data={"train_path": str(repo_root / "data/tiny/ranked.jsonl")})))
    by_path = rlhfkit.rm(str(path))
    model = load_scalar_model("tiny-llama", tokenizer)
    in_memory = rlhfkit.rm(
        tiny(repo_root, "rm", tmp_path / "memory", train={"max_steps": 2},
             data={"train_path": ""}),
        train_dataset=datasets.Dataset.from_list(rows(repo_root, "ranked.jsonl")),
        model=model, tokenizer=tokenizer)
    assert in_memory.history == by_path.history and len(by_path.history) >= 2


def test_config_as_path_object_or_dict_is_one_config(repo_root, tmp_path, monkeypatch):
    from rlhfkit.config import build, load_config
    from rlhfkit.trainers.dpo import DPOConfig

    monkeypatch.chdir(repo_root)
    from_path = rlhfkit._config(DPOConfig, "examples/dpo_tiny.yaml")
    assert from_path == load_config(DPOConfig, "examples/dpo_tiny.yaml")
    assert rlhfkit._config(DPOConfig, from_path) is from_path
    assert rlhfkit._config(DPOConfig, tiny(repo_root, "dpo", "runs/dpo_tiny")) == from_path
    assert build(DPOConfig, {}) == rlhfkit._config(DPOConfig, {})


def test_dpo_copy_reference_of_a_loaded_policy_equals_the_named_one(repo_root, tmp_path,
                                                                     tokenizer):
    from rlhfkit.models import load_causal_lm

    settings = dict(train={"max_steps": 2, "report_to": []}, dpo={"reference": "copy"},
                    data={"train_path": str(repo_root / "data/tiny/pairs.jsonl")})
    named = rlhfkit.dpo(tiny(repo_root, "dpo", tmp_path / "named", **settings))
    loaded = rlhfkit.dpo(tiny(repo_root, "dpo", tmp_path / "loaded", **settings),
                         model=load_causal_lm("tiny-llama", tokenizer), tokenizer=tokenizer)
    assert loaded.history == named.history


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_reward_fn_equals_the_configured_function(repo_root, tmp_path, stage):
    from rlhfkit.online.rewards import compressibility

    seen = []

    def reward_fn(prompts, responses):
        seen.append(len(responses))
        return compressibility(prompts, responses)

    settings = dict(train={"max_steps": 2, "report_to": []},
                    data={"train_path": str(repo_root / "data/tiny/prompts.jsonl")})
    configured = getattr(rlhfkit, stage)(tiny(repo_root, stage, tmp_path / "named", **settings))
    settings["reward"] = {"function": ""}
    prompts = rows(repo_root, "prompts.jsonl")
    python = getattr(rlhfkit, stage)(tiny(repo_root, stage, tmp_path / "fn", **settings),
                                     reward_fn=reward_fn, train_dataset=prompts)
    assert seen, "reward_fn was not called"
    strip = lambda history: [{k: v for k, v in r.items() if not k.startswith("time_")
                              and k != "tokens_per_second"} for r in history]
    assert strip(python.history) == strip(configured.history)
    assert set(python.summary) >= {"last"}
    config_yaml = (tmp_path / "fn" / "config.yaml").read_text()  # the run names its function
    assert "test_python_api:test_reward_fn_equals_the_configured_function.<locals>.reward_fn" \
        in config_yaml


def test_errors_are_the_clis_messages_raised(repo_root, tmp_path):
    config = tiny(repo_root, "sft", tmp_path / "e", train={"max_steps": 1})
    with pytest.raises(rlhfkit.ConfigError, match="unknown key 'train.max_stepz'"):
        rlhfkit.sft({**config, "train": {"max_stepz": 1}})
    with pytest.raises(rlhfkit.ConfigError, match="expected a dict, a YAML path or a SFTConfig"):
        rlhfkit.sft(42)
    with pytest.raises(rlhfkit.ConfigError, match="cannot read config file"):
        rlhfkit.sft(str(tmp_path / "missing.yaml"))
    with pytest.raises(rlhfkit.DataError, match=r"^train_dataset:2: .*response"):
        rlhfkit.sft(config, train_dataset=[{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    with pytest.raises(rlhfkit.DataError, match="train_dataset: no rows"):
        rlhfkit.sft(config, train_dataset=[])
    ppo = tiny(repo_root, "ppo", tmp_path / "p", reward={"function": ""},
               train={"max_steps": 1, "report_to": []})
    with pytest.raises(rlhfkit.ConfigError, match="expected a reward model folder, or set "
                                                  "reward.url or reward.function"):
        rlhfkit.ppo(ppo)  # no reward_fn either
    with pytest.raises(rlhfkit.RewardError, match=r"returned 1 values for 16 responses"):
        rlhfkit.ppo(ppo, reward_fn=lambda prompts, responses: [0.0])
    assert isinstance(rlhfkit.DataError("x"), ValueError)
    with pytest.raises(AttributeError):
        rlhfkit.no_such_name

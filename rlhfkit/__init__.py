"""rlhfkit: SFT, reward models from rankings, DPO, PPO, GRPO and the human-feedback loop.

Packages, lowest layer first: ``ops`` and ``data`` → ``models`` → ``trainers`` (SFT, reward
models, DPO) → ``online`` (PPO, GRPO) → ``label`` (human feedback) → ``demo`` and ``loop``
(iterated online RLHF: sample, rank, retrain the reward model, optimise, repeat); the root
holds the entry points (tests/test_layers.py).

From Python (docs/python_api.md) — the same code path as ``rlhfkit <stage> --config``::

    import rlhfkit
    result = rlhfkit.sft({"model": {"name": "tiny-llama"}, "train": {"max_steps": 3}},
                         train_dataset=[{"prompt": "Hi", "response": "Hello!"}, ...])
    result.metrics, result.history, result.final_dir

One function per stage. ``config`` is a dict (the YAML's structure), a YAML path or the
stage's config object, validated as the CLI validates it; the optional in-memory objects
replace what the config names (data.train_path/eval_path, model.name's weights and tokenizer,
reward.function) and reach the stage's ``run`` as loader arguments. A user error raises what
the CLI prints as one line: ConfigError, DataError, ModelLoadError, RewardError.

The functions live here, in the package root, as thin wrappers importing their stage lazily:
``import rlhfkit`` stays as light as the CLI's start, and the root keeps holding only entry
points (tests/test_layers.py).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

__version__ = "0.1.0"

__all__ = ["sft", "rm", "dpo", "ppo", "grpo", "run_loop", "Result", "ConfigError",
           "DataError", "ModelLoadError", "RewardError", "__version__"]

# The errors a user can cause, importable from here without loading a stage.
# stage → (module, config class), each module with ``run(config, **objects)``: the one table
# the CLI (rlhfkit/cli.py) and the functions below both dispatch through.
STAGES = {
    "sft": ("rlhfkit.trainers.sft", "SFTConfig"),
    "rm": ("rlhfkit.trainers.reward", "RMConfig"),
    "dpo": ("rlhfkit.trainers.dpo", "DPOConfig"),
    "ppo": ("rlhfkit.online.ppo", "PPOConfig"),
    "grpo": ("rlhfkit.online.grpo", "GRPOConfig"),
    "demo": ("rlhfkit.demo.pipeline", "DemoConfig"),
    "loop": ("rlhfkit.loop.pipeline", "LoopConfig"),
}

_ERRORS = {"ConfigError": "rlhfkit.config", "DataError": "rlhfkit.data.readers",
           "ModelLoadError": "rlhfkit.models.loading", "RewardError": "rlhfkit.online.rewards"}


def __getattr__(name: str):
    if name in _ERRORS:
        return getattr(importlib.import_module(_ERRORS[name]), name)
    raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}")


@dataclass(frozen=True)
class Result:
    """What a stage left behind. ``metrics``: the last metrics.jsonl row (the final step, with
    the held-out metrics of the last evaluation); ``history``: every row; ``summary``: what the
    stage's ``run`` returned (online stages: {"before", "after", "last"})."""
    output_dir: Path
    metrics: dict
    history: list
    summary: dict

    @property
    def final_dir(self) -> Path:
        """The trained model: loads with ``from_pretrained``; its README.md is the model card."""
        return self.output_dir / "final"


def _config(config_cls, config, overrides: dict | None = None):
    """A config object from a dict, a YAML path or a config object (checked as the CLI does),
    with ``overrides`` ({"reward": {"function": ...}}) applied before the check."""
    import dataclasses

    from rlhfkit.config import ConfigError, build, load_config, merge

    overrides = overrides or {}
    if isinstance(config, config_cls):
        for part, values in overrides.items():
            config = dataclasses.replace(
                config, **{part: dataclasses.replace(getattr(config, part), **values)})
        return config
    if isinstance(config, dict):
        return build(config_cls, merge(config, overrides))
    if isinstance(config, (str, Path)):
        return load_config(config_cls, str(config), [
            f"{part}.{key}={json.dumps(value)}" for part, values in overrides.items()
            for key, value in values.items()])
    raise ConfigError(f"config: expected a dict, a YAML path or a {config_cls.__name__}, "
                      f"got {type(config).__name__}")


def _run(module_name: str, class_name: str, config, **objects) -> Result:
    module = importlib.import_module(module_name)
    reward_fn = objects.get("reward_fn")
    # reward_fn takes reward.function's place: config.yaml names it ('module:qualname'), the
    # check for a reward source passes, and the stage calls the object itself.
    overrides = {} if reward_fn is None else {"reward": {"function": ":".join((
        getattr(reward_fn, "__module__", None) or "python",
        getattr(reward_fn, "__qualname__", type(reward_fn).__name__)))}}
    config = _config(getattr(module, class_name), config, overrides)
    summary = module.run(config, **{k: v for k, v in objects.items() if v is not None})
    output_dir = Path(config.output_dir).resolve()  # still right after a chdir
    path = output_dir / "metrics.jsonl"
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []
    return Result(output_dir, history[-1] if history else {}, history, summary)


def sft(config, train_dataset=None, eval_dataset=None, model=None, tokenizer=None) -> Result:
    """Supervised fine-tuning (``rlhfkit sft``). Rows: {"prompt", "response"} and the other SFT
    schemas of docs/data.md; ``model``: a causal LM, ``tokenizer`` its tokenizer."""
    return _run(*STAGES["sft"], config, train_dataset=train_dataset,
                eval_dataset=eval_dataset, model=model, tokenizer=tokenizer)


def rm(config, train_dataset=None, eval_dataset=None, model=None, tokenizer=None) -> Result:
    """Reward model from pairs or ranked lists (``rlhfkit rm``); ``model``: a sequence
    classifier with one label (AutoModelForSequenceClassification, num_labels=1)."""
    return _run(*STAGES["rm"], config, train_dataset=train_dataset,
                eval_dataset=eval_dataset, model=model, tokenizer=tokenizer)


def dpo(config, train_dataset=None, eval_dataset=None, model=None, tokenizer=None) -> Result:
    """DPO and its loss family (``rlhfkit dpo``) on preference pairs; ``model``: the policy
    (with dpo.reference=copy its frozen copy is the reference unless dpo.ref_model is set)."""
    return _run(*STAGES["dpo"], config, train_dataset=train_dataset,
                eval_dataset=eval_dataset, model=model, tokenizer=tokenizer)


def ppo(config, reward_fn=None, train_dataset=None, eval_dataset=None, model=None,
        tokenizer=None) -> Result:
    """PPO with a critic (``rlhfkit ppo``). ``reward_fn(prompts, responses, **kwargs) ->
    list[float]`` replaces reward.function; rows are prompts ({"prompt"}); ``model``: the
    policy (the critic and a reward model still load from the config)."""
    return _run(*STAGES["ppo"], config, reward_fn=reward_fn,
                train_dataset=train_dataset, eval_dataset=eval_dataset, model=model,
                tokenizer=tokenizer)


def grpo(config, reward_fn=None, train_dataset=None, eval_dataset=None, model=None,
         tokenizer=None) -> Result:
    """GRPO and the critic-free family (``rlhfkit grpo``); arguments as ``ppo``."""
    return _run(*STAGES["grpo"], config, reward_fn=reward_fn,
                train_dataset=train_dataset, eval_dataset=eval_dataset, model=model,
                tokenizer=tokenizer)


def run_loop(config) -> Result:
    """Iterated online RLHF (``rlhfkit loop``): rounds of sample, rank (simulated judge or
    people), reward model, policy, compare. ``metrics`` is the last round's row, ``history``
    every round's; ``summary`` {"rounds", "report"}. Not called ``loop``: importing the
    package rlhfkit/loop/ sets ``rlhfkit.loop`` to it, which would shadow a function."""
    return _run(*STAGES["loop"], config)

"""Configs: frozen dataclasses, one per stage, composed from shared parts.

Each field is declared with ``option(default, help, ...)``: the help text doubles as
``rlhfkit <stage> --help``. Values are validated on construction (``__post_init__``) and a bad
value raises ``ConfigError`` naming the dotted key, the value and what is allowed.
Loading: YAML file, then dotted ``key=value`` overrides (``train.max_steps=3``). A stage's own
keys sit under its part (``rm.margin``, ``sft.sample_prompts``, ``dpo.beta``); a key still in
its old place fails with one line naming the new one (``StageConfig.MOVED_KEYS``).
Tests: tests/test_config.py.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range."""


def option(default: Any, help: str, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, factory: Any = None, above: float | None = None):
    """A dataclass field with its help text and the constraints ``validate`` checks: ``min``
    and ``max`` inclusive, ``above`` exclusive (``above=0``: 0 is rejected).

    Zero: a key that accepts 0 either switches its feature off ("0 = off" in its help: no
    clipping, no penalty, no limit) or names what 0 stands for ("0 = train.learning_rate");
    where 0 would silently break a run (a clip range of 0, a β of 0) the key takes ``above=0``.
    tests/test_config.py::test_zero_means_off_is_accepted_and_documented pins the list.
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max, "above": above}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _allowed_text(meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    if above is not None:
        return f"a number in ({above}, {hi}]" if hi is not None else f"a number > {above}"
    if lo is not None and hi is not None:
        return f"a number in [{lo}, {hi}]"
    if lo is not None:
        return f"a number >= {lo}"
    if hi is not None:
        return f"a number <= {hi}"
    return ""


def validate(obj) -> None:
    """Check every field of a config dataclass against its ``option`` constraints."""
    for f in dataclasses.fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if value is None and f.default is None:  # unset: filled in later (demo.resolve)
            continue
        bad = False
        if meta.get("choices") and value not in meta["choices"]:
            bad = True
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if meta.get("min") is not None and value < meta["min"]:
                bad = True
            if meta.get("max") is not None and value > meta["max"]:
                bad = True
            if meta.get("above") is not None and value <= meta["above"]:
                bad = True
        if bad:
            raise ConfigError(f"{f.name}={value!r} is invalid: expected {_allowed_text(meta)}")


def require(condition: bool, key: str, value: Any, expected: str) -> None:
    """Cross-field checks in ``__post_init__``: raise ConfigError naming key, value, expectation."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


class Validated:
    """Mixin: run ``validate`` after construction. Stage/part configs add their own checks."""

    def __post_init__(self):
        validate(self)


# ----------------------------------------------------------------------------- shared parts
@dataclass(frozen=True)
class LoraConfig(Validated):
    enabled: bool = option(False, "Train a LoRA adapter (peft) instead of all weights.")
    r: int = option(16, "LoRA rank.", min=1)
    alpha: float = option(32.0, "LoRA alpha (scale = alpha / r; 0 would switch the adapter "
                          "off and train nothing).", above=0)
    dropout: float = option(0.0, "Dropout on the LoRA input (0 = off).", min=0, max=1)
    target_modules: tuple = option(
        None, "Module names to adapt.",
        factory=lambda: ("q_proj", "k_proj", "v_proj", "o_proj"))


@dataclass(frozen=True)
class ModelConfig(Validated):
    name: str = option("tiny-llama", "HF id or local path, or an alias: 'smollm2-135m-instruct' "
                       "(the embedded model, converted once from its GGUF), 'gemma3-270m' "
                       "(Gemma 3 270M base, Chinese-capable: the optional [zh] extra) or "
                       "'tiny-llama' (2-layer random Llama with the SmolLM2 tokenizer, for "
                       "tests).")
    dtype: str = option("auto", "Weights dtype: auto = float32 on CPU, bfloat16 on CUDA.",
                        choices=("auto", "float32", "bfloat16", "float16"))
    device: str = option("auto", "auto = CUDA when available, else CPU.",
                         choices=("auto", "cpu", "cuda"))
    cache_dir: str = option("", "Where converted models are cached (default ~/.cache/rlhfkit or "
                            "$RLHFKIT_CACHE).")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    lora: LoraConfig = option(None, "LoRA settings.", factory=LoraConfig)


@dataclass(frozen=True)
class DataConfig(Validated):
    train_path: str = option("", "Training data: .jsonl, .json, .jsonl.gz/.json.gz, a datasets "
                             "folder saved with save_to_disk, a folder laid out as a Hub data set "
                             "repository, or a Hub data set name 'owner/name' (datasets."
                             "load_dataset; with HF_DATASETS_OFFLINE=1 only from the datasets "
                             "cache). Row schemas: docs/data.md.")
    eval_path: str = option("", "Held-out data (same kinds as train_path; may be the same Hub "
                            "data set with another data.eval_split); empty = split eval_fraction "
                            "off train_path.")
    split: str = option("train", "Split of a Hub data set (or Hub-layout folder) read for "
                        "training, e.g. train_prefs; slices work (train[:1000]). Files ignore it.")
    eval_split: str = option("test", "Split of a Hub data set read when data.eval_path names "
                             "one, e.g. test_prefs.")
    subset: str = option("", "Subset of a Hub data set (load_dataset's config name) for "
                         "data.train_path and data.eval_path; empty = its default.")
    eval_fraction: float = option(0.1, "Share of train rows held out when eval_path is empty "
                                  "(0 = off: no held-out split).", min=0, max=0.9)
    max_rows: int = option(0, "Use at most this many training rows (0 = all).", min=0)
    max_eval_rows: int = option(0, "Use at most this many eval rows (0 = all).", min=0)
    max_prompt_length: int = option(256, "Prompt tokens kept (truncated from the left).", min=1)
    max_length: int = option(512, "Prompt + response tokens kept (response cut on the right).",
                             min=2)
    template: str = option("auto", "auto = use the tokenizer's chat template when it has one; "
                           "chat = require it; plain = raw prompt + response text.",
                           choices=("auto", "chat", "plain"))
    system_prompt: str = option("", "System message put before the prompt when the chat template "
                                "is used (empty = the template's default).")

    def __post_init__(self):
        super().__post_init__()
        require(self.max_length > self.max_prompt_length, "max_length", self.max_length,
                f"> data.max_prompt_length ({self.max_prompt_length})")
        require(bool(self.split.strip()), "split", self.split, "a split name, e.g. train")
        require(bool(self.eval_split.strip()), "eval_split", self.eval_split,
                "a split name, e.g. test")


# accelerate's tracker names (accelerate.utils.LoggerType without "all";
# tests/trainers/test_tracking.py::test_tracker_names_are_accelerates pins them).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive",
            "swanlab", "trackio")


# train.lr_scheduler's choices (transformers.get_scheduler names); the demo offers the same
LR_SCHEDULERS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class TrainConfig(Validated):
    learning_rate: float = option(1e-5, "Peak learning rate.", min=0)
    weight_decay: float = option(0.0, "AdamW weight decay (0 = off).", min=0)
    adam_beta1: float = option(0.9, "AdamW beta1.", min=0, max=1)
    adam_beta2: float = option(0.999, "AdamW beta2.", min=0, max=1)
    batch_size: int = option(8, "Global batch size (rows per optimiser step, over all processes "
                             "and accumulation micro-steps).", min=1)
    micro_batch_size: int = option(0, "Rows per forward pass per process (0 = batch_size / "
                                   "processes, no accumulation).", min=0)
    max_steps: int = option(0, "Optimiser steps (0 = num_epochs over the data).", min=0)
    num_epochs: float = option(1.0, "Epochs when max_steps is 0.", above=0)
    lr_scheduler: str = option("cosine", "Schedule after warm-up.", choices=LR_SCHEDULERS)
    warmup_steps: int = option(0, "Linear warm-up steps.", min=0)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 = off).", min=0)
    seed: int = option(42, "Seed for init, data order and sampling.")
    eval_every: int = option(0, "Evaluate every N steps (0 = only at the end).", min=0)
    save_every: int = option(0, "Checkpoint every N steps (0 = only at the end).", min=0)
    log_every: int = option(1, "Write metrics every N steps.", min=1)
    # "fp32", not accelerate's "no": YAML reads a bare no as false.
    mixed_precision: str = option("fp32", "fp32 = no autocast; bf16 = autocast to bfloat16 "
                                  "(CUDA, or CPUs with avx512_bf16/AMX).",
                                  choices=("fp32", "bf16"))
    report_to: tuple = option(None, "Trackers that also get every metrics.jsonl row, through "
                              "accelerate's tracking (one of " + ", ".join(TRACKERS) + "); "
                              "empty = metrics.jsonl only. Trackers other than tensorboard are "
                              "optional installs (pip install 'rlhfkit[trackers]').",
                              factory=lambda: ("tensorboard",))
    project_name: str = option("rlhfkit", "The trackers' project: the wandb project, the MLflow "
                               "experiment, the subfolder of <output_dir>/tensorboard/.")

    def __post_init__(self):
        super().__post_init__()
        unknown = [name for name in self.report_to if name not in TRACKERS]
        require(not unknown, "report_to", unknown[0] if unknown else None,
                "tracker names among " + ", ".join(TRACKERS))


@dataclass(frozen=True)
class HubConfig(Validated):
    """Sharing ``final/`` on the Hugging Face Hub: its own part, not ``train.*``, because it is
    about the artefact, not the optimisation, and its keys read as one sentence
    (hub.push_to_hub, hub.model_id, hub.private)."""
    push_to_hub: bool = option(False, "Upload final/ (weights, tokenizer, model card README.md) "
                               "to the Hub at the end of the run (needs a token: "
                               "`huggingface-cli login` or HF_TOKEN).")
    model_id: str = option("", "The Hub repository, 'user/name' or 'org/name' (created when "
                           "missing).")
    private: bool = option(False, "Create the repository private.")

    def __post_init__(self):
        super().__post_init__()
        require(not self.push_to_hub or self.model_id, "model_id", self.model_id,
                "a repository id like 'user/name' when hub.push_to_hub is true")


@dataclass(frozen=True)
class StageConfig(Validated):
    """The fields every stage shares; stage configs subclass this and add their own part."""
    output_dir: str = option("runs/out", "Everything the run writes goes here.")
    resume: bool = option(False, "Continue from the newest checkpoint-<step>/ in output_dir.")
    model: ModelConfig = option(None, "Model settings.", factory=ModelConfig)
    data: DataConfig = option(None, "Data settings.", factory=DataConfig)
    train: TrainConfig = option(None, "Optimisation and logging settings.", factory=TrainConfig)
    hub: HubConfig = option(None, "Sharing final/ on the Hugging Face Hub.", factory=HubConfig)
    # Old top-level key → its dotted new place; ``build`` names the new place when an old key
    # is given (YAML or command line). Stages fill it with ``moved_into``.
    MOVED_KEYS: ClassVar[dict[str, str]] = {}


def moved_into(part: str, part_cls) -> dict[str, str]:
    """Every key of ``part_cls`` that used to sit at the top level → ``part.key``."""
    return {f.name: f"{part}.{f.name}" for f in dataclasses.fields(part_cls)}


# ----------------------------------------------------------------------------- loading
def _field_type(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints[name]


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, value: Any, tp) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} is invalid: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} is invalid: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-5" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} is invalid: expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} is invalid: expected a string")
    if tp is tuple or origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"{key}={value!r} is invalid: expected a list")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}={value!r} is invalid: expected a mapping")
    return value


def build(cls, values: dict, prefix: str = ""):
    """Build config ``cls`` from a nested dict, checking names, types and constraints."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    moved = [key for key in unknown if key in getattr(cls, "MOVED_KEYS", {})]
    if moved:
        raise ConfigError(f"{prefix}{moved[0]} moved to {prefix}{cls.MOVED_KEYS[moved[0]]}")
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}': allowed keys at this level are "
                          + ", ".join(sorted(names)))
    kwargs = {}
    for name, raw in values.items():
        tp = _field_type(cls, name)
        key = prefix + name
        kwargs[name] = build(tp, raw, key + ".") if _is_config(tp) else _coerce(key, raw, tp)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        message = str(err)
        if prefix and not message.startswith(prefix):
            message = prefix + message  # name the full dotted key
        raise ConfigError(message) from None


def parse_overrides(overrides: list[str]) -> dict:
    """['train.max_steps=3', 'model.name=x'] → nested dict, values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is invalid: expected key=value, "
                              "e.g. train.max_steps=3")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part}")
        node[parts[-1]] = value
    return nested


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls, path: str | None = None, overrides: list[str] = ()):
    """YAML file (optional) + dotted overrides → a validated, frozen ``cls``."""
    values: dict = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    values = merge(values, parse_overrides(list(overrides)))
    return build(cls, values)


def to_dict(config) -> dict:
    """Plain nested dict (tuples as lists) for YAML dumps."""
    def plain(value):
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def dump_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def help_lines(cls, prefix: str = "") -> list[str]:
    """One line per key: dotted name, default, allowed values, help text."""
    lines = []
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f.name)
        key = prefix + f.name
        if _is_config(tp):
            lines.extend(help_lines(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = repr(default)
        if default is None and hasattr(cls, "shown_default"):  # unset: where its value comes from
            shown = cls.shown_default(f.name)
        allowed = _allowed_text(f.metadata)
        extra = f" [{allowed}]" if allowed else ""
        lines.append(f"  {key} = {shown}{extra}\n      {f.metadata.get('help', '')}")
    return lines

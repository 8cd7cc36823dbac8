"""The model card of ``final/`` (huggingface_hub's ModelCard) and its upload to the Hub.

``common.save_final`` writes the card beside the weights and, when hub.push_to_hub is set,
uploads the finished folder in one commit.
"""
from __future__ import annotations

from pathlib import Path


def stage_of(config) -> str:
    """The CLI's name of a config's stage: SFTConfig → sft, RMConfig → rm, GRPOConfig → grpo."""
    return type(config).__name__.removesuffix("Config").lower()


def model_card(config, metrics: dict, data_source: str | None = None):
    """huggingface_hub's ModelCard for ``final/``: base model, stage, data, key settings (model,
    train and the stage's own part), the final metrics (the last metrics.jsonl row), the whole
    config and the rlhfkit version. ``data_source`` names in-memory data (Python API)."""
    import rlhfkit
    from huggingface_hub import ModelCard, ModelCardData

    from rlhfkit.config import dump_yaml, to_dict

    stage, values = stage_of(config), to_dict(config)
    name = config.model.name
    hub_id = "/" in name and not Path(name).exists()  # metadata takes Hub ids, not paths
    data = ModelCardData(library_name="transformers", base_model=name if hub_id else None,
                         tags=["rlhfkit", stage])
    settings = {f"model.{k}": values["model"][k] for k in ("name", "dtype")}
    settings.update({f"model.lora.{k}": v for k, v in values["model"]["lora"].items()}
                    if config.model.lora.enabled else {"model.lora.enabled": False})
    settings.update({f"train.{k}": values["train"][k] for k in (
        "learning_rate", "batch_size", "max_steps", "num_epochs", "lr_scheduler", "warmup_steps",
        "seed", "mixed_precision")})
    settings.update({f"{stage}.{k}": v for k, v in values.get(stage, {}).items()})
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in settings.items())
    shown = {k: v for k, v in metrics.items() if k != "step"}
    metric_rows = "\n".join(f"| {key} | {value:.6g} |" if isinstance(value, float)
                             else f"| {key} | {value} |" for key, value in shown.items())
    train_data = data_source or config.data.train_path or "(none)"
    eval_data = config.data.eval_path or (
        f"{config.data.eval_fraction:g} of the training rows" if config.data.eval_fraction
        else "(none)")
    lora = " (a LoRA run: merged weights here, the adapter in adapter/)" \
        if config.model.lora.enabled else ""
    step = metrics.get("step", "-")
    body = f"""
# {Path(config.output_dir).name}

A `{stage}` model trained with [rlhfkit](https://pypi.org/project/rlhfkit/) {rlhfkit.__version__}
from `{name}`. This folder loads with `from_pretrained`{lora}.

## Data
- train: `{train_data}`
- held out: `{eval_data}`

## Key settings
| key | value |
|---|---|
{rows}

## Final metrics (step {step}, the last row of metrics.jsonl)
| metric | value |
|---|---|
{metric_rows or "| (none logged) | |"}

## Full config
<details><summary>config.yaml</summary>

```yaml
{dump_yaml(config).rstrip()}
```
</details>
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def push_final(folder: Path, hub_config, stage: str) -> str:
    """Create hub.model_id (when missing) and upload ``final/`` to it in one commit; returns the
    commit's URL. The token is huggingface_hub's (``huggingface-cli login`` or HF_TOKEN).
    Tested against a fake HfApi (tests/trainers/test_tracking.py::test_push_to_hub_uploads_final)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_config.model_id, private=hub_config.private, exist_ok=True,
                    repo_type="model")
    commit = api.upload_folder(repo_id=hub_config.model_id, folder_path=str(folder),
                               repo_type="model", commit_message=f"rlhfkit {stage}: final model")
    return str(getattr(commit, "commit_url", commit))

"""Checkpoints: save, find the newest, resume; only trained weights are written.

- Checkpoints (``checkpoint-<step>/``) hold models, optimisers, schedulers and every process's
  RNG state (``accelerator.save_state``) plus ``trainer_state.json``; ``resume=true`` loads the
  newest and cuts metrics.jsonl back to that step, so a resumed run's file equals an
  uninterrupted run's (tests/trainers/test_sft.py::test_resume_equals_uninterrupted).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhfkit.trainers.common import Run

CHECKPOINT_PREFIX = "checkpoint-"


def newest_checkpoint(output_dir: Path) -> Path | None:
    found = [p for p in Path(output_dir).glob(CHECKPOINT_PREFIX + "*")
             if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def drop_frozen_weights(models, weights, output_dir) -> None:
    """Checkpoints keep the weights that train, and buffers. Frozen weights never change, and
    a resumed run rebuilds them from the same source: a LoRA base, frozen RM layers. So a LoRA
    checkpoint holds the adapter and its optimiser state, not the base: SmolLM2 + LoRA r16
    (examples/grpo_smollm2.yaml) saves 7.4 MB of weights + 14.9 MB of optimiser state instead
    of 545 MB + 14.9 MB, and its resumed iteration 3 logs the uninterrupted run's score.
    (accelerate's save_state pre-hook; ``maybe_resume`` loads with strict=False.)"""
    for model, state in zip(models, weights):
        frozen = {name for name, p in model.named_parameters(remove_duplicate=False)
                  if not p.requires_grad}
        for key in frozen & set(state):
            del state[key]


def check_saved_weights(models, input_dir) -> None:
    """Before ``load_state(strict=False)``: every trained weight of each model is in its
    checkpoint file and the file holds nothing the model lacks (a checkpoint written under
    another process count names its keys differently). Only frozen weights may be missing."""
    from safetensors import safe_open

    for index, model in enumerate(models):
        path = Path(input_dir) / f"model{f'_{index}' if index else ''}.safetensors"
        if not path.exists():
            continue  # accelerate's .bin fallback loads strictly enough on its own
        with safe_open(str(path), "pt") as saved:
            keys = set(saved.keys())
        names: dict[int, list[str]] = {}  # tied weights: one tensor, several names
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad:
                names.setdefault(id(p), []).append(name)
        missing = [group[0] for group in names.values() if not keys & set(group)]
        unexpected = sorted(keys - set(model.state_dict()))
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {path} does not fit the model: trained weights missing "
                f"{missing[:3]}, unknown keys {unexpected[:3]} (was it written with another "
                "model or number of processes?)")


def save_checkpoint(run: Run, step: int, extra: dict | None = None, keep: int = 2) -> Path:
    """Everything needed to continue exactly: prepared models, optimisers, schedulers, RNG."""
    path = run.output_dir / f"{CHECKPOINT_PREFIX}{step}"
    run.accelerator.save_state(str(path))
    if run.is_main:
        state = {"step": step, "extra": extra or {}, "time": time.time()}
        (path / "trainer_state.json").write_text(json.dumps(state))  # written last: complete
        old = sorted((p for p in run.output_dir.glob(CHECKPOINT_PREFIX + "*")
                      if p.name[len(CHECKPOINT_PREFIX):].isdigit() and p != path),
                     key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
        for stale in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    run.accelerator.wait_for_everyone()
    return path


def maybe_resume(run: Run) -> tuple[int, dict]:
    """(step to continue from, extra state) — (0, {}) when not resuming or nothing saved.

    A run that starts at step 0 starts metrics.jsonl empty: rerunning into the same output_dir
    replaces the earlier run's curve instead of appending to it."""
    path = newest_checkpoint(run.output_dir) if run.config.resume else None
    if path is None:
        run.metrics.truncate_after(-1)
        return 0, {}
    run.accelerator.load_state(str(path), strict=False)  # frozen weights are not saved
    state = json.loads((path / "trainer_state.json").read_text())
    run.metrics.truncate_after(state["step"])
    return state["step"], state.get("extra", {})

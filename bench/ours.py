"""rlhfkit side of a workload: a stage config, its run handles, model, optimiser, schedule.

Built from the stage modules' own functions (``common.start_run``, ``make_optimizer``, …) and
timed around the stage's real ``train_step``, so the bench measures the code users run.
"""
from __future__ import annotations

import os

from harness import MODEL_DIR

MODEL = "smollm2-135m-instruct"


def overrides(workdir: str, batch_size: int, extra: tuple = ()) -> list[str]:
    """Settings shared with the TRL side: AdamW lr 1e-5, constant schedule, clip 1.0, fp32."""
    return [f"output_dir={workdir}", f"model.name={MODEL}", "model.dtype=float32",
            "model.device=cpu", "model.gradient_checkpointing=false",
            f"model.cache_dir={MODEL_DIR.parent}", f"train.batch_size={batch_size}",
            "train.micro_batch_size=0", "train.learning_rate=1e-5", "train.weight_decay=0.0",
            "train.lr_scheduler=constant", "train.warmup_steps=0", "train.max_grad_norm=1.0",
            "train.max_steps=1000", *extra]


def config(stage_cls, workdir: str, batch_size: int, extra: tuple = ()):
    """The workload's config; ``run.py --rlhfkit-set KEY=VALUE,...`` adds overrides last (e.g.
    ``train.micro_batch_size=2`` to trade speed for memory), passed in RLHFKIT_BENCH_SET."""
    from rlhfkit.config import load_config

    chosen = tuple(item for item in os.environ.get("RLHFKIT_BENCH_SET", "").split(",") if item)
    return load_config(stage_cls, None, overrides(workdir, batch_size, (*extra, *chosen)))


def prepare(run, model, steps: int = 1000):
    """Optimiser and schedule exactly as the stage's ``run`` makes them, then accelerate.prepare."""
    from rlhfkit.trainers import common

    optimizer = common.make_optimizer(model, run.config.train)
    scheduler = common.make_scheduler(optimizer, run.config.train, steps)
    model, optimizer, scheduler = run.accelerator.prepare(model, optimizer, scheduler)
    model.train()
    return model, optimizer, scheduler


def tokenizer():
    from rlhfkit.models import load_tokenizer

    return load_tokenizer(MODEL, str(MODEL_DIR.parent))


def encoded(prompt: list[int], response: list[int], eos_id: int):
    """An rlhfkit ``Encoded`` row from ids; the response ends with EOS like ``data.encode``."""
    from rlhfkit.data import Encoded

    return Encoded(list(prompt), list(response[:-1]) + [eos_id])

"""The stage loop, written once: every stage (sft, reward, dpo, and the online loop of PPO and
GRPO, rlhfkit/online/loop.py::train_online) hands it a step function.

From the step after the resume point (``checkpoints.maybe_resume``) to the last: the step, held-out
evaluation every train.eval_every steps and at the last, metrics.jsonl every train.log_every,
a checkpoint every train.save_every holding the stage's extra state, the progress bar. What
only one stage does (samples before/after, rollout logs, DPO's report) stays in that stage,
inside its step or evaluate callable or around the loop.
"""
from __future__ import annotations

from typing import Callable

from rlhfkit.trainers import checkpoints, common


def train_loop(run: common.Run, start: int, steps: int, step: Callable[[int], dict], *,
               evaluate: Callable[[int], dict] | None = None, state: dict | None = None,
               postfix: Callable[[dict], dict] = lambda metrics: {}, desc: str = "") -> dict:
    """Steps ``start + 1 … steps``; returns the metrics of the last one ({} when none ran).

    ``step(s)`` runs step s (1-based) and returns its metrics, reduced over processes;
    ``evaluate(s)`` (None = no held-out split) returns held-out metrics, merged into step s's;
    ``state`` is saved in each checkpoint (``maybe_resume`` returns it; the step may update
    it in place); ``postfix(metrics)`` is shown on the progress bar.
    """
    train = run.config.train
    metrics: dict = {}
    # Closed on an error too: the CLI's one-line message then starts on a line of its own.
    with common.progress(run, steps, start, desc) as bar:
        for number in range(start + 1, steps + 1):
            metrics = step(number)
            if evaluate is not None and common.should(train.eval_every, number, steps):
                metrics.update(evaluate(number))
            if common.should(train.log_every, number, steps):
                run.metrics.log(number, metrics)
            if common.should(train.save_every, number, steps):
                checkpoints.save_checkpoint(run, number, state)
            bar.set_postfix(postfix(metrics))
            bar.update(1)
    return metrics

"""Step 2 of a round (and the ranking of step 5): who ranks the tasks a step put in the store.

- simulated: the judge (any reward source, rlhfkit/online/rewards.py) scores a task's
  candidates; ``ops.noise.noisy_ranks`` turns the scores into a noisy person's ranking, and the
  judgment goes through the queue exactly as a person's does (``queue.next_task`` leases the
  task, ``queue.submit`` stores it under the judge's annotator name). The noise of a task is
  seeded by (seed, task id) and drawn in candidate order, not in the order the queue shows
  (random per lease): a rerun, or a second run of the same config, ranks a task the same way.
- human: the loop waits, polling the store, until every task of the batch has its judgments
  (``overlap`` per task), printing progress; it can start ``rlhfkit label serve`` itself.
Restart: a judgment is one transaction in the store, so a rerun finds what was stored and
asks only for the rest; the judge gets its own open lease back first.
Tests: tests/loop/test_loop.py (simulated, kill -9 and restart), tests/loop/test_human.py.
"""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Callable

import torch
from sqlalchemy import func, select

from rlhfkit.label.queue import Annotator, next_task, submit
from rlhfkit.label.schema import annotators, judgments, tasks
from rlhfkit.label.store import Store, StoreError, add_annotator
from rlhfkit.ops.noise import noisy_ranks


def annotator_named(store: Store, name: str) -> Annotator:
    """The annotator called ``name``, created (token never shown: only the loop judges as it)
    when missing."""
    with store.engine.connect() as conn:
        row = conn.execute(select(annotators.c.id, annotators.c.name, annotators.c.active)
                           .where(annotators.c.name == name)).first()
    if row is None:
        try:
            add_annotator(store, name)
        except StoreError:  # created meanwhile by another process
            pass
        return annotator_named(store, name)
    return Annotator(*row)


def judge_queue(store: Store, judge: Annotator, score: Callable, temperature: float,
                flip_prob: float, seed: int) -> int:
    """Rank every task in ``judge``'s queue → judgments stored. ``score(prompts, responses)``:
    the judge's scores (B,)."""
    stored = 0
    while (task := next_task(store, judge)) is not None:
        shown = task["candidates"]  # in the lease's random order
        # the noise is drawn in candidate-id (slot) order, then put back in the shown order: the
        # same candidate gets the same draw in every run, whatever order the queue showed
        slots = sorted(range(len(shown)), key=lambda i: shown[i]["id"])
        texts = [shown[i]["text"] for i in slots]
        scores = score([task["prompt"]] * len(texts), texts)
        in_slots = simulated_ranks(scores, temperature, flip_prob, seed, task["task_id"])
        ranks = [0] * len(shown)
        for i, rank in zip(slots, in_slots):
            ranks[i] = rank
        _, created = submit(store, judge, task["task_id"], ranks)
        stored += created
    return stored


def simulated_ranks(scores, temperature: float, flip_prob: float, seed: int,
                    task_id: int) -> list[int]:
    """The simulated annotator's ranking of one task (1 = best): the judge's noise-free
    ``scores`` (K,) through ``ops.noise.noisy_ranks``, its noise seeded by (seed, task id), so a
    rerun ranks the task the same way. bench/selection.py labels its pool with it too."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + task_id)
    return [int(r) for r in noisy_ranks(scores[None], temperature, flip_prob, generator)[0]]


def truth_ranks(scores, task_id: int) -> list[int]:
    """The judge's own ranking of one task, without the annotator's noise (the hidden truth a
    reward model is measured against): ``simulated_ranks`` at temperature 0 without flips."""
    return simulated_ranks(scores, 0.0, 0.0, 0, task_id)


def progress(store: Store, tag: str) -> tuple[int, int]:
    """(judgments stored, judgments needed) for the tasks tagged ``tag``: ``overlap`` each."""
    with store.engine.connect() as conn:
        n_tasks = conn.execute(select(func.count()).select_from(tasks)
                               .where(tasks.c.tag == tag)).scalar()
        done = conn.execute(select(func.count()).select_from(judgments)
                            .join(tasks, tasks.c.id == judgments.c.task_id)
                            .where(tasks.c.tag == tag)).scalar()
        overlap = store.settings(conn).overlap
    return done, n_tasks * overlap


def wait_for_people(store: Store, tag: str, poll_seconds: float, where: str = "") -> None:
    """Block until the tasks tagged ``tag`` have all their judgments, printing progress."""
    last = None
    while True:
        done, needed = progress(store, tag)
        if (done, needed) != last:
            print(f"[loop] {tag}: {done}/{needed} judgments{where}", flush=True)
            last = done, needed
        if done >= needed:
            return
        time.sleep(poll_seconds)


def start_server(db: str, host: str, port: int) -> subprocess.Popen:
    """``rlhfkit label serve`` on the store, in a child process the loop stops at its end."""
    return subprocess.Popen([sys.executable, "-m", "rlhfkit", "label", "serve", "--db", db,
                             "--host", host, "--port", str(port)])

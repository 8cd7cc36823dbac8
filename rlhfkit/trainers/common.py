"""What every stage's loop shares: accelerator, batching, metrics, final save.

The final folder's model card and Hub upload live in ``model_card.py``.

No behaviour lives in a base class: stages call these functions.
- Batches come from a seeded stream of permutations, so the rows of step s depend only on
  (seed, s): resuming at step s needs no sampler state.
- Checkpoints (save, resume, only trained weights written) live in ``checkpoints.py``.
- Loss normalisation across processes is explicit: a stage counts its units (tokens, pairs)
  over all processes and micro-batches with ``global_count`` and divides by that.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rlhfkit.config import dump_yaml
from rlhfkit.trainers.checkpoints import check_saved_weights, drop_frozen_weights
from rlhfkit.trainers.model_card import model_card, push_final, stage_of


# ----------------------------------------------------------------------------- setup
@dataclass
class Run:
    """The handles of one run. ``metrics`` writes metrics.jsonl and the trackers (main process)."""
    config: object
    accelerator: object
    output_dir: Path
    metrics: "MetricsLog"
    device: torch.device
    dtype: torch.dtype
    data_source: str | None = None  # in-memory data (Python API), named in the model card

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index


def start_run(config, train_dataset=None) -> Run:
    """Accelerator (with the trackers of train.report_to), seeds, output_dir with config.yaml,
    metrics log. ``train_dataset``: in-memory training rows (Python API), named in the model
    card instead of data.train_path."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from rlhfkit.allocator import keep_freed_memory
    from rlhfkit.models import resolve_device, resolve_dtype

    keep_freed_memory()  # a notebook or script did not come through the entry point's re-exec
    device = resolve_device(config.model.device)
    mixed = "bf16" if config.train.mixed_precision == "bf16" else "no"
    output_dir = Path(config.output_dir)
    # TensorBoard writes to <logging_dir>/<project_name>: <output_dir>/tensorboard/rlhfkit/.
    project = ProjectConfiguration(project_dir=str(output_dir),
                                   logging_dir=str(output_dir / "tensorboard"))
    # step_scheduler_with_optimizer=False: otherwise accelerate steps the LR schedule once per
    # process per step, and 2 processes would decay it twice as fast as 1.
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed,
                              step_scheduler_with_optimizer=False,
                              log_with=list(config.train.report_to) or None,
                              project_config=project)
    shard_on_cpu(accelerator)
    accelerator.register_save_state_pre_hook(drop_frozen_weights)
    accelerator.register_load_state_pre_hook(check_saved_weights)
    set_seed(config.train.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(dump_yaml(config))
    accelerator.wait_for_everyone()
    metrics = MetricsLog(output_dir, enabled=accelerator.is_main_process, accelerator=accelerator,
                         config=config)
    source = None if train_dataset is None else \
        f"in memory: a {type(train_dataset).__name__} of {len(train_dataset)} rows"
    return Run(config, accelerator, output_dir, metrics, accelerator.device,
               resolve_dtype(config.model.dtype, accelerator.device), source)


def shard_on_cpu(accelerator) -> None:
    """Honour an FSDP config (examples/accelerate/fsdp2.yaml) on CPU processes.

    ``accelerate launch`` passes the config on (ACCELERATE_USE_FSDP and the FSDP_* variables),
    but accelerate 1.15 turns it into FSDP for accelerator devices only: CPU processes run
    plain data parallel (MULTI_CPU) without a word. PyTorch's FSDP2 (``fully_shard``) shards on
    CPU with gloo, so the run's state takes accelerate's FSDP type and the plugin the launcher
    configured: from here on, prepare, backward, clip_grad_norm_, get_state_dict and
    save_state/load_state are accelerate's own FSDP2 code (tests/e2e/test_fsdp2.py: its
    checkpoints hold one torch.distributed.checkpoint shard per process)."""
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or \
            os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # Both shared states, as AcceleratorState.__init__ writes them: a later AcceleratorState()
    # (accelerate makes some inside prepare) copies the process state's type over its own.
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP


def start_trackers(accelerator, config, output_dir: Path) -> None:
    """``accelerator.init_trackers`` (main process) with the flat config as hyper-parameters;
    wandb writes its run folder into output_dir (``WANDB_MODE=offline`` sends nothing) and
    names the run after it. Called by the first ``MetricsLog.log``: a process that never logs
    starts no tracker thread (a 2-process script that only calls start_run exited with
    'terminate called without an active exception' once TensorBoard's writer thread ran)."""
    if not config.train.report_to:
        return
    init_kwargs = {"wandb": {"dir": str(output_dir), "name": output_dir.name},
                   "mlflow": {"run_name": output_dir.name}}
    accelerator.init_trackers(config.train.project_name, config=flat_config(config),
                              init_kwargs=init_kwargs)


def flat_config(config) -> dict:
    """{"train.learning_rate": 1e-05, "model.lora.target_modules": "q_proj,v_proj", ...}: the
    scalar types every tracker takes as hyper-parameters (lists joined, None as "")."""
    from rlhfkit.config import to_dict

    def walk(values: dict, prefix: str):
        for key, value in values.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            elif isinstance(value, list):
                yield prefix + key, ",".join(str(v) for v in value)
            elif value is None or not isinstance(value, (bool, int, float, str)):
                yield prefix + key, "" if value is None else str(value)
            else:
                yield prefix + key, value
    return dict(walk(to_dict(config), ""))


# ----------------------------------------------------------------------------- batching
def batch_rows(n_rows: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Row indices of global batch ``step`` (0-based) from a stream of seeded permutations."""
    rows, start = [], step * batch_size
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n_rows)
        order = list(range(n_rows))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        rows.extend(order[offset:offset + batch_size - len(rows)])
    return rows


def micro_batches(rows: list[int], rank: int, world_size: int, micro_batch_size: int
                  ) -> list[list[int]]:
    """This process's slice of a global batch, cut into micro-batches for accumulation."""
    return chunks(rows[rank::world_size], micro_batch_size)


def rows_per_forward(micro_batch_size: int, max_forward_tokens: int, row_tokens: int) -> int:
    """Micro-batch size under a token cap: ``micro_batch_size`` (0 = all rows) lowered until
    rows x ``row_tokens`` <= ``max_forward_tokens`` (0 = no cap), never below one row.
    Activation memory grows with the tokens of one forward pass, so the cap bounds it
    (tests/trainers/test_dpo_trainer.py::test_rows_per_forward_hand_values)."""
    if max_forward_tokens <= 0:
        return micro_batch_size
    fit = max(1, max_forward_tokens // max(row_tokens, 1))
    return fit if micro_batch_size == 0 else min(micro_batch_size, fit)


def chunks(rows, size: int) -> list:
    """``rows`` (a list or a 1-D tensor of indices) cut into consecutive pieces of ``size``
    (0 = one piece)."""
    size = size or len(rows)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def total_steps(train_config, n_rows: int) -> int:
    if train_config.max_steps:
        return train_config.max_steps
    return max(1, math.ceil(train_config.num_epochs * n_rows / train_config.batch_size))


def global_count(accelerator, local: torch.Tensor | float) -> torch.Tensor:
    """Sum of a count (tokens, pairs) over all processes."""
    value = torch.as_tensor(local, dtype=torch.float32, device=accelerator.device)
    return accelerator.reduce(value, reduction="sum") if accelerator.num_processes > 1 else value


def global_sum(accelerator, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum each metric tensor over processes and return plain floats (one reduce)."""
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys]).to(
        accelerator.device)
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    return dict(zip(keys, stacked.tolist()))


# ----------------------------------------------------------------------------- models
def load_policy(run, config, tokenizer, model=None):
    """The trainable causal LM of a stage: model.name in the run's dtype (or ``model``, one
    already loaded: the Python API's), optional gradient checkpointing, optional LoRA adapter
    (config.model.lora)."""
    from rlhfkit.models import apply_lora, load_causal_lm

    if model is None:
        model = load_causal_lm(config.model.name, tokenizer, run.dtype, config.model.cache_dir)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.model.lora.enabled:
        model = apply_lora(model, config.model.lora)
    return model


# ----------------------------------------------------------------------------- optimisation
def make_optimizer(model_or_params, train_config):
    """AdamW over the trainable weights of a model, a list of parameters, or a list of
    parameter groups (dicts with "params" and their own options, e.g. a head's lr)."""
    items = list(model_or_params.parameters() if hasattr(model_or_params, "parameters")
                 else model_or_params)
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
        params = [g for g in groups if g["params"]]
    else:
        params = [p for p in items if p.requires_grad]
    # fused: one kernel over all parameters. On 2 CPU cores one step of SmolLM2's 134.5M
    # parameters took 1.40 s with foreach and 0.30–0.37 s fused (bench notes, issue 7);
    # foreach also allocated a 513 MB temporary per step.
    return torch.optim.AdamW(params, lr=train_config.learning_rate,
                             betas=(train_config.adam_beta1, train_config.adam_beta2),
                             weight_decay=train_config.weight_decay, fused=True)


def clip_gradients(run, model, max_norm: float | None = None) -> float:
    """Clip the global gradient norm to ``max_norm`` (default train.max_grad_norm; 0 = off);
    returns the norm before clipping (0.0 when off)."""
    max_norm = run.config.train.max_grad_norm if max_norm is None else max_norm
    if max_norm <= 0:
        return 0.0
    norm = run.accelerator.clip_grad_norm_(model.parameters(), max_norm)
    # FSDP2: a replicated DTensor
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def make_scheduler(optimizer, train_config, steps: int):
    from transformers import get_scheduler

    return get_scheduler(train_config.lr_scheduler, optimizer,
                         num_warmup_steps=train_config.warmup_steps, num_training_steps=steps)


def accumulate_step(run: Run, models: list, optimizers: list, schedulers: list, pieces: list,
                    losses: Callable[[object], tuple[list[torch.Tensor], dict]],
                    sums: dict[str, torch.Tensor] | None = None
                    ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One optimiser step per model over the micro-batches ``pieces``: the accumulate-and-step
    every stage shares (sft, reward, dpo, PPO's and GRPO's minibatch steps).

    ``losses(piece)`` runs under autocast and returns (the losses to backpropagate, each already
    divided by its global count, and this piece's metric sums). Gradients of every model are
    all-reduced on the last micro-batch only (``no_sync`` before it); each loss is multiplied
    by world_size because DDP averages gradients over processes. Then each model's gradients
    are clipped (train.max_grad_norm) and every optimiser and scheduler steps.
    ``sums``: where the metric sums start (zeros for the keys every process must reduce, even
    one without a micro-batch). Returns (the metric sums added over the pieces, detached float;
    each model's grad norm).
    """
    sums = dict(sums or {})
    for index, piece in enumerate(pieces):
        with contextlib.ExitStack() as stack:
            if index < len(pieces) - 1:
                for model in models:
                    stack.enter_context(run.accelerator.no_sync(model))
            with run.accelerator.autocast():
                to_backward, piece_sums = losses(piece)
            for loss in to_backward:
                run.accelerator.backward(loss * run.world_size)
        for key, value in piece_sums.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
    norms = [clip_gradients(run, model) for model in models]
    for optimizer, scheduler in zip(optimizers, schedulers):
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return sums, norms


# ----------------------------------------------------------------------------- metrics
class MetricsLog:
    """metrics.jsonl (one JSON object per logging step: our contract) + the same numbers to
    the trackers of train.report_to through ``accelerator.log`` (tests/trainers/test_tracking.py)."""

    def __init__(self, output_dir: Path, enabled: bool, accelerator=None, config=None):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        # no accelerator, or no config.train.report_to: metrics.jsonl only
        self.accelerator, self.config, self.output_dir = accelerator, config, output_dir
        self.trackers_started = False

    def truncate_after(self, step: int) -> None:
        """Drop lines written after ``step`` (by a run that crashed past its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.accelerator is not None and self.config is not None \
                and self.config.train.report_to and not self.trackers_started:
            start_trackers(self.accelerator, self.config, self.output_dir)
            self.trackers_started = True
        if self.accelerator is not None and self.accelerator.trackers:
            scalars = {key: value for key, value in row.items()
                       if key != "step" and isinstance(value, (int, float))}
            self.accelerator.log(scalars, step=step)
            for tracker in self.accelerator.trackers:  # readable while the run goes on
                if tracker.name == "tensorboard":
                    tracker.writer.flush()

    def close(self) -> None:
        """Finish every tracker (flush and close TensorBoard, finish the wandb run). What
        ``accelerator.end_training`` does minus its ``destroy_process_group``: the process
        group outlives a stage (the demo and the Python API run several in one process)."""
        if self.accelerator is not None:
            for tracker in self.accelerator.trackers:
                tracker.finish()


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(output_dir) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress(run: Run, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not run.is_main,
                dynamic_ncols=True)


def should(every: int, step: int, last: int) -> bool:
    """True on every ``every``-th step and on the last one."""
    return step == last or (every > 0 and step % every == 0)


# ----------------------------------------------------------------------------- final model
def save_final(run: Run, model, tokenizer, name: str = "final") -> Path:
    """``final/`` loads with plain ``from_pretrained``; LoRA runs also keep ``final/adapter/``.
    It holds a model card (README.md, ``model_card``) and goes to the Hub when
    hub.push_to_hub is set (``push_final``)."""
    from rlhfkit.models import is_peft

    run.accelerator.wait_for_everyone()
    target = run.output_dir / name
    # FSDP2: every process joins the gather of the full weights (accelerate's get_state_dict,
    # torch's full state dict, on the main process's CPU); the main process saves a plain copy.
    state = run.accelerator.get_state_dict(model) if is_sharded(run) else None
    if run.is_main:
        model = run.accelerator.unwrap_model(model)
        if state is not None:
            model = unsharded_copy(model, state)
        if is_peft(model):
            model.save_pretrained(str(target / "adapter"))
            model = model.merge_and_unload()
        model.save_pretrained(str(target), safe_serialization=True)
        tokenizer.save_pretrained(str(target))
        last = read_metrics(run.output_dir)[-1:] if (run.output_dir / "metrics.jsonl").exists() \
            else []
        model_card(run.config, last[0] if last else {}, run.data_source).save(
            str(target / "README.md"))
        if run.config.hub.push_to_hub:
            push_final(target, run.config.hub, stage_of(run.config))
    run.accelerator.wait_for_everyone()
    return target


def is_sharded(run: Run) -> bool:
    """The run's models are sharded over its processes (FSDP2: examples/accelerate/fsdp2.yaml):
    weights are DTensors whose shards live on different processes, so whatever runs one of
    them (a forward, generation, a state dict) runs on every process, not on the main one."""
    return bool(getattr(run.accelerator, "is_fsdp2", False))


def unsharded_copy(model, state: dict):
    """A plain (unsharded) copy of an FSDP2 ``model`` holding its full ``state`` (from
    ``accelerator.get_state_dict``): the same transformers class (and peft adapter) built on
    the meta device, the gathered tensors assigned in place of the empty ones, so ``final/`` is
    written, LoRA merged, exactly as in one process (tests/e2e/test_fsdp2.py)."""
    from torch.distributed.fsdp import FSDPModule

    from rlhfkit.models import is_peft

    def plain_class(module):  # fully_shard swaps a module's class for FSDP<class>
        return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))

    with torch.device("meta"):
        if is_peft(model):
            from peft import get_peft_model

            base = model.get_base_model()
            plain = get_peft_model(plain_class(base)(base.config),
                                   model.peft_config[model.active_adapter])
        else:
            plain = plain_class(model)(model.config)
    plain.load_state_dict(state, assign=True)
    if hasattr(plain, "tie_weights"):  # the gathered copies of tied weights: one tensor again
        plain.tie_weights()
    return plain.eval()


@dataclass
class Timer:
    """Seconds spent per named phase (generate / score / update …)."""
    totals: dict = field(default_factory=dict)

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - self.start
        return _Phase()

"""TRL side of a workload: the TrainingArguments both sides agree on, and the step clock.

TRL is timed through its trainer's real loop (``trainer.train()``): a callback waits for the
driver's go in ``on_step_begin`` and reports in ``on_step_end``, which the HF Trainer calls after
forward, backward, gradient clipping, ``optimizer.step()``, ``lr_scheduler.step()`` and
``zero_grad()``. The batch is fetched and collated before ``on_step_begin`` (not timed).
"""
from __future__ import annotations

import harness
from harness import MODEL_DIR, StepClock


def common_args(workdir: str, batch_size: int, steps: int) -> dict:
    """Same math as the rlhfkit side: fp32, AdamW lr 1e-5 (TRL's default implementation,
    adamw_torch_fused), constant schedule, clip 1.0, no gradient checkpointing, one micro-batch."""
    return dict(output_dir=workdir, per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=1, max_steps=steps, learning_rate=1e-5,
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, gradient_checkpointing=False, bf16=False, fp16=False,
                use_cpu=True, logging_strategy="no", save_strategy="no", report_to="none",
                disable_tqdm=True, dataloader_num_workers=0, seed=1234,
                train_sampling_strategy="sequential")


def step_callback():
    from transformers import TrainerCallback

    class StepCallback(TrainerCallback):
        """Blocks each step on the driver's go; reports its duration."""

        def __init__(self):
            self.clock = StepClock()

        def on_step_begin(self, args, state, control, **kwargs):
            self.clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            self.clock.stop()

    return StepCallback()


def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def causal_lm():
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)


def record_loss(trainer, callback) -> None:
    """Report each step's loss next to its time (a check that both sides compute the same
    thing): wraps ``trainer.compute_loss``; the wrapper only reads the value after the step."""
    original = trainer.compute_loss
    seen = []

    def compute_loss(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out[0] if isinstance(out, tuple) else out)
        return out

    trainer.compute_loss = compute_loss
    stop = callback.clock.stop

    def stop_with_loss(**facts):
        if seen:
            facts["loss"] = float(seen[-1].detach())
            seen.clear()
        stop(**facts)

    callback.clock.stop = stop_with_loss


def train(trainer, **facts) -> None:
    """Report ready (with TRL's version), run TRL's own training loop, report the end."""
    harness.ready("trl", ("trl",), **facts)
    trainer.train()
    harness.finish()

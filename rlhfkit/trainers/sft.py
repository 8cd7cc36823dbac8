"""Stage 1: supervised fine-tuning. Next-token loss on response tokens only.

loss = Σ_{response tokens} −log π(y_t | x, y_<t) / (response tokens in the global batch)
The denominator counts tokens over every process and accumulation micro-step
(``global_count``), so 2 processes × 4 rows equal 1 process × 8 rows exactly
(tests/trainers/test_distributed.py) and accumulation 1×8 equals 8×1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.optim.lr_scheduler import LRScheduler

from rlhfkit.config import StageConfig, Validated, moved_into, option
from rlhfkit.data import Encoded, collate_sequences, encode, load_splits, render_prompt
from rlhfkit.models import load_tokenizer
from rlhfkit.models.forward import response_logprobs
from rlhfkit.ops import masked_sum
from rlhfkit.trainers import checkpoints, common
from rlhfkit.trainers.loop import train_loop


@dataclass(frozen=True)
class SFTPart(Validated):
    sample_prompts: tuple = option(
        (), "Prompts answered greedily before and after training (printed and saved to "
            "samples.jsonl).", factory=tuple)
    sample_max_new_tokens: int = option(48, "Tokens generated per sample prompt.", min=1)


@dataclass(frozen=True)
class SFTConfig(StageConfig):
    output_dir: str = option("runs/sft", "Everything the run writes goes here.")
    sft: SFTPart = option(None, "SFT settings.", factory=SFTPart)
    MOVED_KEYS: ClassVar[dict[str, str]] = moved_into("sft", SFTPart)


def encode_examples(examples, tokenizer, data_config) -> list:
    return [encode(tokenizer, render_prompt(e.messages, tokenizer, data_config.template,
                                            data_config.system_prompt),
                   e.response, data_config.max_prompt_length, data_config.max_length)
            for e in examples]


def sft_loss_sums(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ response-token NLL, response-token count) of one micro-batch."""
    out = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    return -masked_sum(out.logprobs, out.mask), out.mask.sum()


def train_step(run: common.Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: LRScheduler, encoded: list[Encoded], rows: list[int],
               micro_batch_size: int, pad_id: int) -> dict:
    """One optimiser step over the global batch ``rows``; returns globally reduced metrics."""
    chunks = common.micro_batches(rows, run.rank, run.world_size, micro_batch_size)
    batches = [collate_sequences([encoded[i] for i in chunk], pad_id).to(run.device)
               for chunk in chunks]
    # Response tokens predicted (mask shifted by one) over all processes and micro-batches.
    n_tokens = common.global_count(run.accelerator, sum(b.response_mask[:, 1:].sum() for b in batches))

    def losses(batch):
        nll_sum, _ = sft_loss_sums(model, batch)
        return [nll_sum / n_tokens], {"nll": nll_sum}

    sums, (grad_norm,) = common.accumulate_step(
        run, [model], [optimizer], [scheduler], batches, losses,
        {"nll": torch.zeros((), device=run.device)})
    sums = common.global_sum(run.accelerator, sums)
    return {"loss": sums["nll"] / n_tokens.item(), "grad_norm": grad_norm,
            "lr": scheduler.get_last_lr()[0], "tokens": int(n_tokens.item())}


@torch.no_grad()
def evaluate(run: common.Run, model: torch.nn.Module, encoded: list[Encoded], pad_id: int,
             batch_size: int = 8) -> dict:
    """Token-weighted held-out loss, each process taking its share of the rows."""
    model.eval()
    nll, count = torch.zeros((), device=run.device), torch.zeros((), device=run.device)
    mine = list(range(len(encoded)))[run.rank::run.world_size]
    for start in range(0, len(mine), batch_size):
        batch = collate_sequences([encoded[i] for i in mine[start:start + batch_size]],
                                  pad_id).to(run.device)
        with run.accelerator.autocast():
            batch_nll, batch_count = sft_loss_sums(model, batch)
        nll, count = nll + batch_nll.float(), count + batch_count
    model.train()
    sums = common.global_sum(run.accelerator, {"nll": nll, "count": count})
    return {"eval_loss": sums["nll"] / max(sums["count"], 1.0)}


@torch.no_grad()
def greedy_samples(run, model, tokenizer, config: SFTConfig) -> list[dict]:
    """Greedy answers to ``sft.sample_prompts`` (main process only; every process when the
    model is sharded: HF ``generate`` then steps them together, ``synced_gpus``)."""
    if not config.sft.sample_prompts or not (run.is_main or common.is_sharded(run)):
        return []
    from rlhfkit.data.formats import PromptExample
    model = run.accelerator.unwrap_model(model)
    model.eval()
    samples = []
    for prompt in config.sft.sample_prompts:
        text = render_prompt(PromptExample((("user", prompt),)).messages, tokenizer,
                             config.data.template, config.data.system_prompt)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(run.device)
        out = model.generate(**ids, max_new_tokens=config.sft.sample_max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        samples.append({"prompt": prompt, "response": tokenizer.decode(
            out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)})
    model.train()
    return samples


def run(config: SFTConfig, train_dataset=None, eval_dataset=None, model=None,
        tokenizer=None) -> dict:
    """Train, checkpoint, evaluate, save ``final/``; returns the last metrics. The objects
    (rlhfkit.sft's) replace what the config names: data.train_path/eval_path, the model, its
    tokenizer."""
    run_ = common.start_run(config, train_dataset)
    tokenizer = tokenizer or load_tokenizer(config.model.name, config.model.cache_dir)
    train_examples, eval_examples = load_splits(config.data, "sft", config.train.seed,
                                                train_dataset, eval_dataset)
    train_encoded = encode_examples(train_examples, tokenizer, config.data)
    eval_encoded = encode_examples(eval_examples, tokenizer, config.data)
    model = common.load_policy(run_, config, tokenizer, model)
    before = greedy_samples(run_, model.to(run_.device), tokenizer, config)
    steps = common.total_steps(config.train, len(train_encoded))
    optimizer = common.make_optimizer(model, config.train)
    scheduler = common.make_scheduler(optimizer, config.train, steps)
    model, optimizer, scheduler = run_.accelerator.prepare(model, optimizer, scheduler)
    start, _ = checkpoints.maybe_resume(run_)
    pad_id = tokenizer.pad_token_id
    held_out = (lambda step: evaluate(run_, model, eval_encoded, pad_id)) if eval_encoded else None
    if held_out and start == 0:  # the held-out loss before training, logged as step 0
        run_.metrics.log(0, held_out(0))

    def step(number: int) -> dict:
        rows = common.batch_rows(len(train_encoded), config.train.batch_size, number - 1,
                                 config.train.seed)
        return train_step(run_, model, optimizer, scheduler, train_encoded, rows,
                          config.train.micro_batch_size, pad_id)

    model.train()
    last = train_loop(run_, start, steps, step, evaluate=held_out, desc="sft",
                      postfix=lambda metrics: {"loss": f"{metrics['loss']:.4f}"})
    after = greedy_samples(run_, model, tokenizer, config)
    report_samples(run_, before, after)
    common.save_final(run_, model, tokenizer)
    run_.metrics.close()
    return last


def report_samples(run, before: list[dict], after: list[dict]) -> None:
    if not run.is_main or not before:
        return
    with (run.output_dir / "samples.jsonl").open("w") as handle:
        for b, a in zip(before, after):
            handle.write(json.dumps({"prompt": b["prompt"], "before": b["response"],
                                     "after": a["response"]}) + "\n")
            print(f"\n### {b['prompt']}\n--- before: {b['response']}\n--- after:  {a['response']}")

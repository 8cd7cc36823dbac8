"""SFT workload: batch 8 × (64 prompt + 64 response) tokens, loss on response tokens only.

rlhfkit: ``rlhfkit.trainers.sft.train_step`` (lm-head at response positions only).
TRL: ``SFTTrainer`` (completion_only_loss=True, its fused chunked lm-head over every position,
which also computes entropy and top-1 accuracy for its logs).
Both: mean NLL over the 8 × 64 response tokens, AdamW, clip 1.0, fp32, no checkpointing.
"""
from __future__ import annotations

import harness
import ours
import theirs

BATCH, PROMPT, RESPONSE = 8, 64, 64


def rows(args) -> list[dict]:
    return harness.sft_rows(BATCH, harness.scaled(PROMPT, args.scale),
                            harness.scaled(RESPONSE, args.scale))


def run_rlhfkit(args) -> None:
    from rlhfkit.trainers import common, sft

    config = ours.config(sft.SFTConfig, args.workdir, BATCH)
    run = common.start_run(config)
    tokenizer = ours.tokenizer()
    model, optimizer, scheduler = ours.prepare(run, common.load_policy(run, config, tokenizer))
    encoded = [ours.encoded(r["prompt"], r["response"], tokenizer.eos_token_id) for r in rows(args)]
    harness.ready("rlhfkit", ("rlhfkit",))

    def step():
        out = sft.train_step(run, model, optimizer, scheduler, encoded, list(range(BATCH)),
                             config.train.micro_batch_size, tokenizer.pad_token_id)
        return {"loss": out["loss"]}

    harness.serve(step, args.steps)
    harness.finish()


def run_trl(args) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = theirs.tokenizer()
    eos = tokenizer.eos_token_id
    data = rows(args)
    ids = [r["prompt"] + r["response"][:-1] + [eos] for r in data]
    masks = [[0] * len(r["prompt"]) + [1] * len(r["response"]) for r in data]
    dataset = Dataset.from_dict({"input_ids": ids * args.steps,
                                 "completion_mask": masks * args.steps})
    config = SFTConfig(**theirs.common_args(args.workdir, BATCH, args.steps),
                       completion_only_loss=True, packing=False, padding_free=False,
                       max_length=None)
    callback = theirs.step_callback()
    trainer = SFTTrainer(model=theirs.causal_lm(), args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[callback])
    theirs.record_loss(trainer, callback)
    theirs.train(trainer, optimizer=config.optim)


if __name__ == "__main__":
    harness.main({"rlhfkit": run_rlhfkit, "trl": run_trl})

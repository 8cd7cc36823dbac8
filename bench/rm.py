"""Reward-model workload: 8 pairs × (64 prompt + 64 response), −log σ(r_w − r_l) per pair.

rlhfkit: ``rlhfkit.trainers.reward.train_step`` with its defaults: each pair packed into one
row [prompt | chosen | rejected] with the prompt computed once (rm.share_prompt: 192 instead of
256 tokens per pair, the same scores), each score read at its response's last token. TRL: ``RewardTrainer`` (one forward over
[chosen; rejected]; HF's sequence-classification pooling reads the last token that is not the
pad id — SmolLM2's pad id is its EOS, so one position earlier than rlhfkit: same FLOPs, a
different read-out position, hence a different loss value). Both: AdamW, clip 1.0, fp32.
"""
from __future__ import annotations

import harness
import ours
import theirs

PAIRS, PROMPT, RESPONSE = 8, 64, 64


def data(args) -> list[dict]:
    return harness.pairs(PAIRS, harness.scaled(PROMPT, args.scale),
                         harness.scaled(RESPONSE, args.scale))


def run_rlhfkit(args) -> None:
    from rlhfkit.trainers import common, reward

    config = ours.config(reward.RMConfig, args.workdir, PAIRS,
                         ("rm.margin=0.0", "rm.center_coef=0.0"))
    run = common.start_run(config)
    tokenizer = ours.tokenizer()
    eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    lists = [[ours.encoded(p["prompt"], p["chosen"], eos),
              ours.encoded(p["prompt"], p["rejected"], eos)] for p in data(args)]
    model, optimizer, scheduler = ours.prepare(run, reward.build_model(run, config, tokenizer))
    harness.ready("rlhfkit", ("rlhfkit",))

    def step():
        out = reward.train_step(run, model, optimizer, scheduler, lists, list(range(PAIRS)), 2,
                                pad_id)
        return {"loss": out["loss"]}

    harness.serve(step, args.steps)
    harness.finish()


def run_trl(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer = theirs.tokenizer()
    eos = tokenizer.eos_token_id
    pairs = data(args)
    ids = {"chosen_ids": [p["prompt"] + p["chosen"][:-1] + [eos] for p in pairs],
           "rejected_ids": [p["prompt"] + p["rejected"][:-1] + [eos] for p in pairs]}
    dataset = Dataset.from_dict({k: v * args.steps for k, v in ids.items()})
    config = RewardConfig(**theirs.common_args(args.workdir, PAIRS, args.steps), max_length=None,
                          center_rewards_coefficient=None)
    model = AutoModelForSequenceClassification.from_pretrained(harness.MODEL_DIR, num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    callback = theirs.step_callback()
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[callback])
    theirs.record_loss(trainer, callback)
    theirs.train(trainer, optimizer=config.optim)


if __name__ == "__main__":
    harness.main({"rlhfkit": run_rlhfkit, "trl": run_trl})

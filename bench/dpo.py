"""DPO workloads: 8 pairs × (64 prompt + 64 response), sigmoid loss, β = 0.1.

Variants (--variant), the same reference handling on both sides:
  copy         full fine-tuning, a frozen reference copy forwarded every step
               (rlhfkit dpo.reference=copy; TRL ref_model=<copy>)
  precomputed  full fine-tuning, reference log-probs computed once before training (not timed)
               (rlhfkit dpo.reference=precomputed, its default; TRL precompute_ref_log_probs=True)
  lora         LoRA r=16, α=32, q/k/v/o, the reference = the policy with its adapter off
               (rlhfkit dpo.reference=adapter; TRL peft_config and no ref_model)
rlhfkit: ``rlhfkit.trainers.dpo.train_step`` with its defaults: each pair packed into one row
[prompt | chosen | rejected] with the prompt computed once (dpo.share_prompt; 192 instead of
256 tokens per pair, the same log-probs: tests/models/test_packing.py), lm-head at response positions
only; the reference copy / adapter-off reference runs packed too. TRL: ``DPOTrainer`` (one concatenated forward, fused chunked lm-head
over every position). Loss: mean over pairs of −log σ(β·z) on both sides.
"""
from __future__ import annotations

import time

import harness
import ours
import theirs

PAIRS, PROMPT, RESPONSE = 8, 64, 64
LORA = {"r": 16, "alpha": 32, "targets": ("q_proj", "k_proj", "v_proj", "o_proj")}
RLHFKIT_REFERENCE = {"copy": "copy", "precomputed": "precomputed", "lora": "adapter"}


def data(args) -> list[dict]:
    return harness.pairs(PAIRS, harness.scaled(PROMPT, args.scale),
                         harness.scaled(RESPONSE, args.scale))


def run_rlhfkit(args) -> None:
    from rlhfkit.trainers import common, dpo, dpo_reference

    variant = args.variant or "copy"
    extra = ["dpo.loss_type=sigmoid", "dpo.beta=0.1",
             f"dpo.reference={RLHFKIT_REFERENCE[variant]}", f"dpo.eval_batch_size={PAIRS}"]
    if variant == "lora":
        extra += ["model.lora.enabled=true", f"model.lora.r={LORA['r']}",
                  f"model.lora.alpha={LORA['alpha']}", "model.lora.dropout=0.0"]
    config = ours.config(dpo.DPOConfig, args.workdir, PAIRS, tuple(extra))
    run = common.start_run(config)
    tokenizer = ours.tokenizer()
    eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    train = dpo.PreferenceData([dpo.EncodedPair(ours.encoded(p["prompt"], p["chosen"], eos),
                                                ours.encoded(p["prompt"], p["rejected"], eos))
                                for p in data(args)])
    policy = common.load_policy(run, config, tokenizer)
    clock = time.perf_counter()
    reference = dpo_reference.make_reference(run, config, policy, tokenizer, train,
                                             dpo.PreferenceData([]))
    reference_s = time.perf_counter() - clock
    model, optimizer, scheduler = ours.prepare(run, policy)
    harness.ready("rlhfkit", ("rlhfkit",), variant=variant, reference=reference.mode,
                 reference_setup_s=reference_s)

    def step():
        out = dpo.train_step(run, model, optimizer, scheduler, reference, train,
                             list(range(PAIRS)), pad_id)
        return {"loss": out["loss"]}

    harness.serve(step, args.steps)
    harness.finish()


def run_trl(args) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    variant = args.variant or "copy"
    tokenizer = theirs.tokenizer()
    eos = tokenizer.eos_token_id
    pairs = data(args)
    ids = {"prompt_ids": [p["prompt"] for p in pairs],
           "chosen_ids": [p["chosen"][:-1] + [eos] for p in pairs],
           "rejected_ids": [p["rejected"][:-1] + [eos] for p in pairs]}
    dataset = Dataset.from_dict({k: v * args.steps for k, v in ids.items()})
    # DPOTrainer tokenises text in __init__; it gets a dummy text set there and the id rows
    # (the collator's own input format) right after, so both sides see the same token ids.
    dummy = Dataset.from_dict({"prompt": ["a"] * PAIRS, "chosen": ["b"] * PAIRS,
                               "rejected": ["c"] * PAIRS})
    config = DPOConfig(**theirs.common_args(args.workdir, PAIRS, args.steps),
                       loss_type=["sigmoid"], beta=0.1, max_length=None,
                       precompute_ref_log_probs=variant == "precomputed",
                       precompute_ref_batch_size=PAIRS)
    kwargs = {}
    if variant == "copy":
        kwargs["ref_model"] = theirs.causal_lm()
    if variant == "lora":
        from peft import LoraConfig
        kwargs["peft_config"] = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                           lora_dropout=0.0, target_modules=list(LORA["targets"]),
                                           task_type="CAUSAL_LM")
    callback = theirs.step_callback()
    trainer = DPOTrainer(model=theirs.causal_lm(), args=config, train_dataset=dummy,
                         processing_class=tokenizer, callbacks=[callback], **kwargs)
    clock = time.perf_counter()
    trainer.train_dataset = (trainer._precompute_ref_logps(dataset, "train", PAIRS)
                             if variant == "precomputed" else dataset)
    reference_s = time.perf_counter() - clock
    theirs.record_loss(trainer, callback)
    theirs.train(trainer, variant=variant, optimizer=config.optim,
                 reference_setup_s=reference_s)


if __name__ == "__main__":
    harness.main({"rlhfkit": run_rlhfkit, "trl": run_trl})

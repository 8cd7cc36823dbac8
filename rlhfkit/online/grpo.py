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
The config (``GRPOConfig``, ``GRPOPart``) is in grpo_config.py, step 4 and the policy's
training forward in grpo_train.py; this module runs steps 1–3 and wires the iteration.
Logs, evaluation on held-out prompts, checkpoints, ``resume=true`` and the update's epochs
are PPO's (rlhfkit/online/loop.py: ``train_online``, ``update_epochs``); per-iteration metrics:
score_mean/std, kl_mean (k1 per response, nats), kl_token_mean (k3 per token, the loss term),
advantage spread, zero-std groups, times, and rollout fidelity (the sampler's log-probs against
the trainer's: ``fidelity_*``; truncated importance sampling with rollout.tis_cap).
"""
from __future__ import annotations

import torch

from rlhfkit.online import rollout as rollouts
from rlhfkit.online.grpo_config import GRPOConfig, GRPOPart  # noqa: F401 (the stage's config)
from rlhfkit.online.grpo_train import GRPOBatch, grpo_update, policy_logprobs
from rlhfkit.online.loop import (
    Prompts,
    fidelity_for,
    gather_rows,
    generate_for,
    sampler_stands_for_trainer,
    seed_sampling,
    train_online,
)
from rlhfkit.online.roles import Roles
from rlhfkit.ops import masked_mean, masked_sum
from rlhfkit.ops.grpo import (
    ADVANTAGES,
    reverse_kl_from_reference_samples,
    weight_positive,
)
from rlhfkit.ops.ppo import apply_missing_eos_penalty, clip_scores, kl_k1
from rlhfkit.trainers import common


# ----------------------------------------------------------------------------- steps 1–3
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

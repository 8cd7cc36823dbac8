"""The four roles of PPO and how they are built: ``policy`` (the actor, trainable),
``value_model`` (the critic), ``reward_model`` (frozen, rlhfkit/online/rewards.py) and ``ref_policy``
(frozen: a copy of the initial policy, or the LoRA policy with its adapter switched off —
no second copy of the weights; tests/online/test_ppo.py::test_adapter_reference_equals_frozen_copy).

Critic layouts: ``separate`` — a value model initialised from the reward model, with its own
optimiser (DeepSpeed-Chat style); ``shared`` — a value head on the policy's last hidden state,
trained through the policy's optimiser (loss = actor + vf_coef · critic).
Trainable parts are wrapped in modules whose ``forward`` does the whole pass, so DDP (and
accelerate's other wrappers) see every forward. Under FSDP2 (examples/accelerate/fsdp2.yaml) the
policy and the value model themselves are prepared, one ``accelerator.prepare`` each, and the
wrappers hold the sharded models: each model is then its own FSDP root, so generation may call
the policy directly (its layers, embeddings and head are FSDP units of their own).
The frozen roles are not sharded: ref_policy and the reward model are replicated in every
process (docs/scale-out.md: measured at tiny scale, and why).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.models import (
    ModelLoadError,
    adapter_disabled,
    apply_lora,
    load_causal_lm,
    load_scalar_model,
)
from rlhfkit.models.forward import response_logprobs, score_head, token_scores
from rlhfkit.models.loading import disable_dropout
from rlhfkit.models.packing import packed_token_logprobs
from rlhfkit.models.scoring import STATS_FILE
from rlhfkit.online.rewards import build_reward_sources
from rlhfkit.trainers import common


class ActorModule(torch.nn.Module):
    """The policy, plus the value head in the shared layout: one module, so DDP sees one forward."""

    def __init__(self, policy, value_head: torch.nn.Module | None = None):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, input_ids, attention_mask, response_mask, with_entropy=False,
                temperature=1.0, packed=None):
        """(ResponseLogprobs over (B, T−1), values (B, T) or None). With ``packed`` =
        (PackedBatch, width) instead: ((response-aligned log-probs (S, width), entropy (S, width)
        or None), None)."""
        if packed is not None:
            return packed_token_logprobs(self.policy, *packed, temperature, with_entropy), None
        if self.value_head is None:
            return response_logprobs(self.policy, input_ids, attention_mask, response_mask,
                                     with_entropy, temperature), None
        captured = []  # the decoder's last hidden state (B, T, H), shared by both heads
        hook = self.policy.get_decoder().register_forward_hook(
            lambda module, args, out: captured.append(out[0]))
        try:
            out = response_logprobs(self.policy, input_ids, attention_mask, response_mask,
                                    with_entropy, temperature)
        finally:
            hook.remove()
        return out, self.value_head(captured[-1]).squeeze(-1).float()

    def set_requires_gradient_sync(self, requires_gradient_sync: bool) -> None:
        """accelerate's ``no_sync`` under FSDP2 calls this on the model it is given: the sharded
        policy inside."""
        self.policy.set_requires_gradient_sync(requires_gradient_sync)


class CriticModule(torch.nn.Module):
    """The separate value model: V_t = its scalar head at every position (B, T)."""

    def __init__(self, value_model):
        super().__init__()
        self.value_model = value_model

    def forward(self, input_ids, attention_mask):
        return token_scores(self.value_model, input_ids, attention_mask)

    def set_requires_gradient_sync(self, requires_gradient_sync: bool) -> None:
        """As ActorModule's: the sharded value model inside (FSDP2)."""
        self.value_model.set_requires_gradient_sync(requires_gradient_sync)


@dataclass
class Roles:
    """The four roles of a run, with the optimisers and LR schedulers of the trained ones."""
    actor: torch.nn.Module            # prepared ActorModule (policy [+ value head])
    critic: torch.nn.Module | None    # prepared CriticModule; None in the shared layout
    ref_policy: torch.nn.Module | None  # frozen copy; None = the policy with its adapter off
    reward: object                    # rewards.RewardSources
    optimizers: list
    schedulers: list

    def policy(self, accelerator):
        return accelerator.unwrap_model(self.actor).policy

    @contextlib.contextmanager
    def reference(self, accelerator):
        """The ref_policy: the frozen copy, or the policy with its adapter off meanwhile."""
        if self.ref_policy is not None:
            yield self.ref_policy
            return
        policy = self.policy(accelerator)
        with adapter_disabled(policy):
            yield policy


def build_value_model(run, config, tokenizer):
    """The separate critic: the reward model's weights (DeepSpeed-Chat), or ``critic.model_name``
    / the policy's model with a zero-initialised head (V = 0 everywhere at the start)."""
    name = config.critic.model_name or config.reward.model_path or config.model.name
    value_model = load_scalar_model(name, tokenizer, run.dtype, config.model.cache_dir)
    head = score_head(value_model)
    if head is None:
        raise ModelLoadError(
            f"critic: '{name}' ({type(value_model).__name__}) scores whole sequences only, but a "
            "critic needs a value per policy token: set critic.model_name to a decoder with the "
            "policy's tokenizer (e.g. the policy's model.name) or critic.layout=shared")
    if not (Path(name) / STATS_FILE).exists():  # not a trained reward model: a fresh head
        torch.nn.init.zeros_(head.weight)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)
    if config.model.lora.enabled and config.critic.lora:
        value_model = apply_lora(value_model, config.model.lora, task_type="SEQ_CLS")
    return disable_dropout(value_model)  # values scored in eval mode = values in the update


def build_roles(run, config, tokenizer, iterations: int, policy=None, reward_fn=None) -> Roles:
    """policy (actor), value_model (critic; none for GRPO), ref_policy and reward sources,
    prepared. ``config``: a PPOConfig or GRPOConfig (``critic_layout``, ``reference_mode``,
    ``updates_per_iteration``). ``policy``: one already loaded (else model.name);
    ``reward_fn``: a Python reward function (else reward.function)."""
    if policy is None:
        policy = load_causal_lm(config.model.name, tokenizer, run.dtype, config.model.cache_dir)
    if config.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    ref_policy = None
    if config.reference_mode == "copy":  # frozen before any update: the initial policy
        ref_policy = copy.deepcopy(policy).eval().requires_grad_(False).to(run.device)
    if config.model.lora.enabled:
        policy = apply_lora(policy, config.model.lora)
    # Rollouts are scored in eval mode and the update runs in train mode: with dropout on, the
    # first ratio π/π_old would not be 1 (tests/online/test_roles.py).
    disable_dropout(policy)
    layout = config.critic_layout  # separate | shared | none (GRPO: no critic)
    shared = layout == "shared"
    value_head = None
    if shared:  # zero-initialised: V = 0 everywhere at the start
        value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(run.dtype)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    modules = [ActorModule(policy, value_head)]
    train_configs = [config.train]
    if layout == "separate":
        modules.append(CriticModule(build_value_model(run, config, tokenizer)))
        train_configs.append(dataclasses.replace(
            config.train, learning_rate=config.critic.learning_rate or config.train.learning_rate))
    updates = iterations * config.updates_per_iteration
    optimizers = [common.make_optimizer(m, t) for m, t in zip(modules, train_configs)]
    schedulers = [common.make_scheduler(o, t, updates) for o, t in zip(optimizers, train_configs)]
    if common.is_sharded(run):
        modules, optimizers, schedulers = prepare_sharded(run, modules, optimizers, schedulers)
    else:
        prepared = run.accelerator.prepare(*modules, *optimizers, *schedulers)
        n = len(modules)
        modules, optimizers, schedulers = prepared[:n], prepared[n:2 * n], prepared[2 * n:]
    reward = build_reward_sources(config.reward, str(run.device), config.model.dtype, reward_fn)
    return Roles(modules[0], modules[1] if len(modules) == 2 else None, ref_policy, reward,
                 list(optimizers), list(schedulers))


def prepare_sharded(run, modules: list, optimizers: list, schedulers: list) -> tuple:
    """FSDP2: accelerate shards one model per ``prepare`` (with its optimiser), and the model
    must be the transformers model itself for its layers, embeddings and head to become FSDP
    units (``_no_split_modules``, ``get_input_embeddings``): the policy and the value model are
    prepared, each in its own call, and put back into their wrappers."""
    from rlhfkit.config import require

    require(modules[0].value_head is None, "critic.layout", "shared",
            "separate under FSDP2 (the shared value head sits outside the policy's FSDP units)")
    out = ([], [], [])
    for module, optimizer, scheduler in zip(modules, optimizers, schedulers):
        inner = "policy" if isinstance(module, ActorModule) else "value_model"
        model, optimizer, scheduler = run.accelerator.prepare(getattr(module, inner), optimizer,
                                                              scheduler)
        setattr(module, inner, model)
        for part, item in zip(out, (module, optimizer, scheduler)):
            part.append(item)
    return out

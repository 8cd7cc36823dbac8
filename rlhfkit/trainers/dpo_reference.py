"""DPO's sequence log-probs of pairs and where the reference's ref_w, ref_l come from.

``dpo.reference`` picks a mode (see rlhfkit/trainers/dpo.py's docstring): ``precomputed``
(``attach_reference_logps``, cached in output_dir/ref_logps.pt), ``copy`` (a frozen model),
``adapter`` (the LoRA policy with its adapter off) or ``none``; ``make_reference`` builds it.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rlhfkit.data import collate_sequences
from rlhfkit.models import adapter_disabled, is_peft, load_causal_lm
from rlhfkit.models.forward import response_logprobs
from rlhfkit.models.packing import (
    PackedBatch,
    can_pack,
    pack_shared_prompts,
    packed_sequence_logprobs,
)
from rlhfkit.ops import masked_sum

if TYPE_CHECKING:
    from rlhfkit.trainers.dpo import DPOConfig, EncodedPair, PreferenceData

REF_CACHE = "ref_logps.pt"


def pair_batch(pairs: list[EncodedPair], pad_id: int, share_prompt: bool = False):
    """Chosen rows then rejected rows, right-padded together: (2B, T). ``share_prompt``: one
    packed row per pair, its prompt run once (models/packing.py; same log-probs)."""
    if share_prompt:
        return pack_shared_prompts([[p.chosen, p.rejected] for p in pairs], pad_id)
    return collate_sequences([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


def shares_prompt(run, model) -> bool:
    return run.config.dpo.share_prompt and can_pack(model)


def seq_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq_logprobs (2B,) = Σ_t log π over response tokens, response lengths (2B,)), chosen
    first, for a row-per-response or a packed ``pair_batch``."""
    if isinstance(batch, PackedBatch):  # responses in pair order: 2i chosen, 2i + 1 rejected
        sums, lengths = packed_sequence_logprobs(model, batch)
        order = torch.arange(len(sums), device=sums.device).view(-1, 2).t().reshape(-1)
        return sums[order], lengths[order]
    out = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    return masked_sum(out.logprobs, out.mask, dim=1), out.mask.sum(1)


# ----------------------------------------------------------------------------- reference
@dataclass
class Reference:
    """How ref_w, ref_l are obtained for a batch; ``mode`` picks from REFERENCE_LOGPS."""
    mode: str
    ref_policy: object = None  # the frozen copy (mode 'copy')

    @torch.no_grad()
    def logps(self, policy, data: PreferenceData, idx: list[int], batch) -> torch.Tensor | None:
        """Reference sequence log-probs (2B,) in the policy's row order, or None."""
        return REFERENCE_LOGPS[self.mode](self, policy, data, idx, batch)


def _precomputed(ref: Reference, policy, data, idx, batch):
    table = data.ref[idx].to(batch.input_ids.device)  # (B, 2)
    return torch.cat([table[:, 0], table[:, 1]])


def _frozen_copy(ref: Reference, policy, data, idx, batch):
    return seq_logprobs(ref.ref_policy, batch)[0]


def _adapter_off(ref: Reference, policy, data, idx, batch):
    with adapter_disabled(policy) as base:
        return seq_logprobs(base, batch)[0]


REFERENCE_LOGPS = {"precomputed": _precomputed, "copy": _frozen_copy, "adapter": _adapter_off,
                   "none": lambda *args: None}


def load_frozen(name: str, tokenizer, run, cache_dir: str):
    model = load_causal_lm(name, tokenizer, run.dtype, cache_dir).to(run.device)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def precompute_reference(run, ref_policy, pairs: list, batch_size: int, pad_id: int
                         ) -> torch.Tensor:
    """(N, 2) reference sequence log-probs of every pair; each process scores its share."""
    from accelerate.utils import gather_object

    mine = list(range(len(pairs)))[run.rank::run.world_size]
    rows = []
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        batch = pair_batch([pairs[i] for i in idx], pad_id, shares_prompt(run, ref_policy))
        with run.accelerator.autocast():
            logps = seq_logprobs(ref_policy, batch.to(run.device))[0].float().cpu()
        rows += [(i, logps[k].item(), logps[k + len(idx)].item()) for k, i in enumerate(idx)]
    if run.world_size > 1:
        rows = gather_object(rows)
    table = torch.zeros(len(pairs), 2, dtype=torch.float32)
    for i, chosen, rejected in rows:
        table[i, 0], table[i, 1] = chosen, rejected
    return table


def fingerprint(name: str, run, *splits) -> str:
    """Hash of the reference name, dtype and every token id: a stale cache never matches."""
    digest = hashlib.sha256(f"{name}|{run.dtype}".encode())
    for pairs in splits:
        for pair in pairs:
            for enc in pair:
                digest.update(json.dumps([enc.prompt_ids, enc.response_ids]).encode())
    return digest.hexdigest()


def attach_reference_logps(run, config: DPOConfig, policy, tokenizer, train, evaluation) -> None:
    """Precompute (or, on resume, reload) ref log-probs of both splits before training starts.

    Runs before the checkpoint is loaded, so without ``dpo.ref_model`` the policy still holds
    its initial weights and is the reference (a LoRA policy with its adapter off).
    """
    name = config.dpo.ref_model or config.model.name
    key = fingerprint(name, run, train.pairs, evaluation.pairs)
    path = run.output_dir / REF_CACHE
    if config.resume and path.exists():
        cached = torch.load(path, weights_only=True)
        if cached["fingerprint"] == key:
            train.ref, evaluation.ref = cached["train"], cached["eval"]
            return
    if config.dpo.ref_model:
        ref_policy, context = load_frozen(name, tokenizer, run, config.model.cache_dir), \
            contextlib.nullcontext()
    else:
        ref_policy = policy.to(run.device).eval()
        context = adapter_disabled(policy) if is_peft(policy) else contextlib.nullcontext()
    size, pad_id = config.dpo.eval_batch_size, tokenizer.pad_token_id
    with context:
        train.ref = precompute_reference(run, ref_policy, train.pairs, size, pad_id)
        evaluation.ref = precompute_reference(run, ref_policy, evaluation.pairs, size, pad_id)
    policy.train()
    if run.is_main:
        torch.save({"fingerprint": key, "train": train.ref, "eval": evaluation.ref}, path)
    run.accelerator.wait_for_everyone()


def make_reference(run, config: DPOConfig, policy, tokenizer, train, evaluation,
                   source=None) -> Reference:
    """``source``: the in-memory policy before training (Python API); copy mode freezes a copy
    of it unless dpo.ref_model names another model."""
    mode = config.dpo.reference_mode
    if mode == "precomputed":
        attach_reference_logps(run, config, policy, tokenizer, train, evaluation)
    if mode == "copy" and source is not None and not config.dpo.ref_model:
        frozen = copy.deepcopy(run.accelerator.unwrap_model(policy)).to(run.device)
        return Reference(mode, frozen.eval().requires_grad_(False))
    if mode == "copy":
        name = config.dpo.ref_model or config.model.name
        return Reference(mode, load_frozen(name, tokenizer, run, config.model.cache_dir))
    return Reference(mode)

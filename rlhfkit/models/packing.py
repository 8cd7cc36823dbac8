"""Shared-prompt packing: the responses to one prompt in one row, the prompt computed once.

A pair (or ranked list) of responses to the same prompt is usually run as K rows
``[prompt | response_k]``, so the prompt goes through the model K times. Packed, it is one row::

    input_ids     [ p p p | c c c | r r | pad ]
    position_ids  [ 0 1 2 | 3 4 5 | 3 4 |  0  ]
    segment       [ 0 0 0 | 1 1 1 | 2 2 | -1  ]

and a 4-D attention mask lets a token see earlier tokens of the prompt and of its own response
only. Every response token then has exactly the context (and position) it has in its own row, so
scores and log-probs are the unpacked ones to float rounding (tests/models/test_packing.py), for
(1 − 1/K) · prompt tokens less work: a quarter of the tokens with prompt = response length, K = 2.

Only for Llama-family causal decoders whose attention takes a custom 4-D mask (SDPA or eager)
and has no sliding window (``can_pack``): an encoder's tokens see the whole row, so BERT-style
reward models keep one row per response, as does any other architecture until it is tested.
The first token of a response is predicted from the last prompt token, not from the token before
it in the row: log-probs are read at explicit (row, column) sources.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlhfkit.data import Encoded
from rlhfkit.models.forward import score_head, unwrap
from rlhfkit.ops.logprobs import entropy_from_logits, gathered_logprobs

MASKS = ("sdpa", "eager")  # attention implementations that take a custom 4-D mask
# Decoder families whose attention is plain causal (no sliding window of their own) and whose
# rotary positions come from position_ids: the tested ones (tests/models/test_packing.py on Llama).
PACKABLE = ("llama",)


class PackedBatch(NamedTuple):
    input_ids: torch.Tensor       # (N, L)
    position_ids: torch.Tensor    # (N, L)
    segments: torch.Tensor        # (N, L) 0 prompt, k response k of the row, −1 padding
    token_row: torch.Tensor       # (M,) per response token (those with a predecessor): its row,
    token_source: torch.Tensor    #   the column whose logits predict it,
    token_label: torch.Tensor     #   its id,
    token_owner: torch.Tensor     #   the response it belongs to (0 … S−1, input order),
    token_index: torch.Tensor     #   and its index in that response
    last_row: torch.Tensor        # (S,) per response: the row and column of its last token
    last_column: torch.Tensor

    @property
    def n_responses(self) -> int:
        return self.last_row.shape[0]

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in self))


def pack_shared_prompts(groups: list[list[Encoded]], pad_id: int) -> PackedBatch:
    """One row per distinct prompt of each group (a group = a pair or a ranked list; members
    whose prompt was cut differently get their own row). Responses keep their input order:
    response s is the s-th Encoded of the flattened groups."""
    rows, owner = [], 0
    for group in groups:
        by_prompt: dict[tuple, list] = {}
        for encoded in group:
            by_prompt.setdefault(tuple(encoded.prompt_ids), []).append((owner, encoded))
            owner += 1
        rows += list(by_prompt.values())
    width = max(len(members[0][1].prompt_ids) + sum(len(e.response_ids) for _, e in members)
                for members in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    tokens: list[tuple[int, int, int, int, int]] = []  # (row, source, label, owner, index)
    last = [(0, 0)] * owner
    for r, members in enumerate(rows):
        prompt = members[0][1].prompt_ids
        P = len(prompt)
        ids[r, :P] = torch.tensor(prompt, dtype=torch.long)
        positions[r, :P] = torch.arange(P)
        segments[r, :P] = 0
        column = P
        for k, (s, encoded) in enumerate(members, start=1):
            n = len(encoded.response_ids)
            ids[r, column:column + n] = torch.tensor(encoded.response_ids, dtype=torch.long)
            positions[r, column:column + n] = torch.arange(P, P + n)
            segments[r, column:column + n] = k
            for t, label in enumerate(encoded.response_ids):
                source = column + t - 1 if t else P - 1
                if source >= 0:  # a first token with no prompt before it has no prediction
                    tokens.append((r, source, label, s, t))
            last[s] = (r, column + n - 1 if n else max(P - 1, 0))
            column += n
    t = torch.tensor(tokens, dtype=torch.long).reshape(-1, 5)
    lasts = torch.tensor(last, dtype=torch.long).reshape(-1, 2)
    return PackedBatch(ids, positions, segments, *t.unbind(1), lasts[:, 0], lasts[:, 1])


def attention_mask_4d(segments: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, 1, L, L): query i sees key j ≤ i of the prompt or of its own response; padding sees
    only itself (no empty softmax row). Bool (True = attend), or additive 0 / −∞ of ``dtype``."""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = causal & ((key == 0) | (key == query)) & (query >= 0) & (key >= 0)
    allowed |= torch.eye(L, dtype=torch.bool, device=segments.device)
    if dtype is None:
        return allowed[:, None]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _config(model):
    """The transformers config under DDP/accelerate and peft wrappers."""
    inner = unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return getattr(inner, "config", None)


def can_pack(model) -> bool:
    """A Llama-family causal decoder whose attention takes a custom 4-D mask. Anything else
    (encoders, sliding-window or flash-attention models) runs one row per response."""
    config = _config(model)
    return (config is not None and getattr(config, "model_type", "") in PACKABLE
            and getattr(config, "_attn_implementation", None) in MASKS
            and not getattr(config, "sliding_window", None))


def _forward(model, batch: PackedBatch, **kwargs):
    eager = _config(model)._attn_implementation == "eager"
    dtype = next(unwrap(model).parameters()).dtype
    mask = attention_mask_4d(batch.segments, dtype if eager else None)
    return model(input_ids=batch.input_ids, attention_mask=mask,
                 position_ids=batch.position_ids, use_cache=False, **kwargs)


def _picked_logprobs(model, batch: PackedBatch, temperature: float = 1.0,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π of every response token that has a predecessor (M,), and with ``with_entropy`` the
    policy's entropy at the position predicting it (M,), else None; logits only at the columns
    some response token is predicted from."""
    keep, where = torch.unique(batch.token_source, return_inverse=True)  # (K,), (M,)
    logits = _forward(model, batch, logits_to_keep=keep).logits  # (N, K, V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = gathered_logprobs(logits, batch.token_row, where, batch.token_label)
    if not with_entropy:
        return picked, None
    return picked, entropy_from_logits(logits)[batch.token_row, where]


def packed_sequence_logprobs(model, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t log π(y_t | x, y_<t) per response (S,), response lengths (S,))."""
    picked, _ = _picked_logprobs(model, batch)
    S = batch.n_responses
    sums = torch.zeros(S, dtype=picked.dtype, device=picked.device).index_add(
        0, batch.token_owner, picked)
    lengths = torch.zeros(S, dtype=torch.long, device=picked.device).index_add(
        0, batch.token_owner, torch.ones_like(batch.token_owner))
    return sums, lengths


def packed_token_logprobs(model, batch: PackedBatch, width: int, temperature: float = 1.0,
                          with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log π of each response token at its index in the response, (S, width), 0 elsewhere (the
    layout of a rollout's response columns); with ``with_entropy`` the entropy at the position
    that predicts each token, same layout, else None)."""
    picked, entropy = _picked_logprobs(model, batch, temperature, with_entropy)

    def laid_out(values):
        out = torch.zeros(batch.n_responses, width, dtype=values.dtype, device=values.device)
        return out.index_put((batch.token_owner, batch.token_index), values)

    return laid_out(picked), (None if entropy is None else laid_out(entropy))


def packed_sequence_scores(model, batch: PackedBatch) -> torch.Tensor:
    """Reward-model score per response (S,): the score head at the response's last token."""
    head = score_head(model)
    captured = []
    handle = head.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        _forward(model, batch)
    finally:
        handle.remove()
    values = captured[-1].squeeze(-1).float()  # (N, L)
    return values[batch.last_row, batch.last_column]

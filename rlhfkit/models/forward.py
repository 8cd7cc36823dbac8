"""Forward passes every stage shares: per-token log-probs of response tokens.

The decoder runs over the whole sequence, but the lm-head (hidden → 49,152 logits) and the
log-softmax run only where a response token is predicted: prompt and padding positions never
produce logits. Equal to the straightforward full-logits path to 1e-5
(tests/test_models.py::test_response_logprobs_match_full_logits).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlhfkit.ops import entropy_from_logits, selective_logprobs


class ResponseLogprobs(NamedTuple):
    logprobs: torch.Tensor       # (B, T-1) log p(token t+1 | ≤ t), 0 where mask is False
    mask: torch.Tensor           # (B, T-1) True where token t+1 is a response token
    entropy: torch.Tensor | None  # (B, T-1) policy entropy at those positions, when asked


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Decoder output (B, T, H) without the lm-head."""
    decoder = model.get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask.long(),
                  position_ids=position_ids_from(attention_mask), use_cache=False)
    return out.last_hidden_state


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, with_entropy: bool = False,
                      temperature: float = 1.0) -> ResponseLogprobs:
    """log π(y_t | x, y_<t) for every response token, lm-head applied at those positions only."""
    hidden = last_hidden(model, input_ids, attention_mask)  # (B, T, H)
    mask = response_mask[:, 1:].bool()  # position t predicts token t+1: the off-by-one
    labels = input_ids[:, 1:][mask]  # (N,)
    logits = model.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V): response rows only
    if temperature != 1.0:
        logits = logits / temperature
    picked = selective_logprobs(logits, labels)
    logprobs = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
    logprobs = logprobs.masked_scatter(mask, picked)
    entropy = None
    if with_entropy:
        entropy = torch.zeros(mask.shape, dtype=torch.float32, device=picked.device)
        entropy = entropy.masked_scatter(mask, entropy_from_logits(logits))
    return ResponseLogprobs(logprobs, mask, entropy)


def _scalar_parts(model):
    """(decoder, score head) of a sequence-classification model, peft-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix), inner.score


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position (B, T): a critic's values V_t."""
    decoder, head = _scalar_parts(model)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask.long(),
                     position_ids=position_ids_from(attention_mask), use_cache=False)
    return head(hidden.last_hidden_state).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row (B,), for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reward-model score (B,): the head read at the last real token, found from the attention
    mask (not from pad ids: SmolLM2's pad token is its EOS). Same score for left and right
    padding (tests/test_models.py::test_sequence_score_padding_invariant)."""
    values = token_scores(model, input_ids, attention_mask)
    return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)

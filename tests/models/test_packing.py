"""Shared-prompt packing (rlhfkit/models/packing.py) equals one row per response: the same
log-probs, gradients and reward-model scores to 1e-5, for pairs, ranked lists, lists whose
prompts were cut differently, and both attention implementations that take a 4-D mask."""
import pytest
import torch

from rlhfkit.data import Encoded, collate_sequences
from rlhfkit.models import load_causal_lm, load_scalar_model
from rlhfkit.models.forward import response_logprobs, sequence_scores
from rlhfkit.models.packing import (
    attention_mask_4d,
    can_pack,
    pack_shared_prompts,
    packed_sequence_logprobs,
    packed_sequence_scores,
)
from rlhfkit.ops import masked_sum

PAD = 0
GROUPS = [
    [Encoded([11, 12, 13], [21, 22, 23, 2]), Encoded([11, 12, 13], [31, 2])],       # a pair
    [Encoded([41], [51, 2]), Encoded([41], [61, 62, 63, 64, 2]), Encoded([41], [2])],  # K = 3
    [Encoded([71, 72, 73, 74], [81, 2]), Encoded([73, 74], [91, 92, 93, 2])],  # cut differently
]
FLAT = [e for group in GROUPS for e in group]


def unpacked_logprobs(model, device):
    batch = collate_sequences(FLAT, PAD).to(device)
    out = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    return masked_sum(out.logprobs, out.mask, dim=1), out.mask.sum(1)


def test_layout_positions_segments_and_mask(device):
    packed = pack_shared_prompts(GROUPS[:1], PAD).to(device)
    assert packed.input_ids.tolist() == [[11, 12, 13, 21, 22, 23, 2, 31, 2]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 3, 4]]
    assert packed.segments.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2]]
    mask = attention_mask_4d(packed.segments)[0, 0]
    assert mask[7].tolist() == [True] * 3 + [False] * 4 + [True, False]  # r sees prompt + itself
    assert mask[3].tolist() == [True] * 4 + [False] * 5
    # the first token of each response is predicted from the last prompt token (column 2)
    assert packed.token_source.tolist() == [2, 3, 4, 5, 2, 7]
    assert packed.token_owner.tolist() == [0, 0, 0, 0, 1, 1]
    assert list(zip(packed.last_row.tolist(), packed.last_column.tolist())) == [(0, 6), (0, 8)]
    # the third group: its two prompts differ, so two rows
    assert pack_shared_prompts(GROUPS[2:], PAD).input_ids.shape[0] == 2


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_logprobs_and_gradients_equal_one_row_per_response(tokenizer, attention, device):
    model = load_causal_lm("tiny-llama", tokenizer).to(device)
    model.config._attn_implementation = attention
    assert can_pack(model)
    expected, lengths = unpacked_logprobs(model, device)
    expected.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got, got_lengths = packed_sequence_logprobs(model, pack_shared_prompts(GROUPS, PAD).to(device))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got_lengths.tolist() == lengths.tolist()
    got.sum().backward()
    for packed_grad, grad in zip((p.grad for p in model.parameters()), grads):
        torch.testing.assert_close(packed_grad, grad, atol=1e-5, rtol=1e-4)


def test_reward_scores_equal_one_row_per_response(tokenizer, device):
    model = load_scalar_model("tiny-llama", tokenizer).to(device)
    torch.nn.init.normal_(model.score.weight)  # a fresh head is zero-free but small; be sure
    batch = collate_sequences(FLAT, PAD).to(device)
    expected = sequence_scores(model, batch.input_ids, batch.attention_mask)
    got = packed_sequence_scores(model, pack_shared_prompts(GROUPS, PAD).to(device))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_encoders_are_not_packed(tiny_bert, bert_tokenizer):
    assert not can_pack(load_scalar_model(tiny_bert, bert_tokenizer))


def test_only_plain_causal_llama_attention_is_packed(tokenizer):
    model = load_causal_lm("tiny-llama", tokenizer)
    assert can_pack(model)
    model.config.sliding_window = 16  # a window of its own: a custom mask would drop it
    assert not can_pack(model)
    model.config.sliding_window = None
    model.config._attn_implementation = "flash_attention_2"  # takes no 4-D mask
    assert not can_pack(model)

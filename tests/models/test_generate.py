"""The rollout decode loop (rlhfkit/models/generate.py) against HF ``generate`` on tiny-llama: greedy
token for token with left padding, EOS handling and the output width, seeded sampling."""
import copy

import pytest
import torch
from transformers import GenerationConfig

from rlhfkit.config import LoraConfig
from rlhfkit.data import left_pad
from rlhfkit.models import apply_lora, load_causal_lm
from rlhfkit.models.generate import decode
from rlhfkit.online import rollout

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [100, 200], [300, 301, 302, 303], [17]]  # left-padded to 7


@pytest.fixture(scope="module")
def models(tokenizer):
    """The test policy on a device, built once per device (the same weights on each)."""
    built = {}

    def on(device: str):
        if device not in built:
            torch.manual_seed(0)
            policy = load_causal_lm("tiny-llama", tokenizer).eval()
            # a livelier random model than the default init (no 1-token loops)
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(torch.randn_like(p) * 0.2)
            built[device] = policy.to(device)
        return built[device]

    return on


@pytest.fixture
def model(models, device):
    return models(device)


def padded(prompts, pad_id, device):
    """Left-padded (ids, mask) on ``device``."""
    return tuple(t.to(device) for t in left_pad(prompts, pad_id))


def hf_greedy(model, ids, mask, new, pad_id, eos_id):
    settings = GenerationConfig(do_sample=False, max_new_tokens=new, eos_token_id=eos_id,
                                pad_token_id=pad_id)
    return model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=settings)


@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (1.0, 1)])  # argmax; top-1 sampling
def test_greedy_equals_hf_generate_with_left_padding(model, tokenizer, temperature, top_k, device):
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    eos = tokenizer.eos_token_id
    expected = hf_greedy(model, ids, mask, 16, tokenizer.pad_token_id, eos)
    ours = decode(model, ids, mask, 16, temperature, top_k, 1.0, tokenizer.pad_token_id, eos)
    assert torch.equal(ours, expected)
    responses = expected[:, ids.shape[1]:]
    assert len({tuple(r) for r in responses.tolist()}) == len(PROMPTS)  # rows differ: a real test
    assert all(len(set(r)) > 3 for r in responses.tolist())  # and do not repeat one token


def test_lora_policy_equals_hf_generate(model, tokenizer, device):
    policy = apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, r=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a moved adapter
    policy.eval()
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    eos = tokenizer.eos_token_id
    expected = hf_greedy(policy, ids, mask, 8, tokenizer.pad_token_id, eos)
    assert torch.equal(decode(policy, ids, mask, 8, 0.0, 0, 1.0, tokenizer.pad_token_id, eos),
                       expected)


def test_eos_stops_a_row_then_pads_like_hf(model, tokenizer, device):
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    pad, P = tokenizer.pad_token_id, ids.shape[1]
    free = hf_greedy(model, ids, mask, 12, pad, -1)[:, P:]  # no EOS: the greedy continuations
    eos = int(free[2, 4])  # a token row 2 emits at step 4 (and not before) acts as EOS
    assert eos not in free[2, :4].tolist()
    expected = hf_greedy(model, ids, mask, 12, pad, eos)
    ours = decode(model, ids, mask, 12, 0.0, 0, 1.0, pad, eos)
    assert torch.equal(ours, expected)
    assert ours[2, P + 4] == eos and (ours[2, P + 5:] == pad).all()
    out = rollout.Rollout(ours, mask, rollout.response_mask_from(ours[:, P:], eos), P)
    assert out.response_mask[2].tolist() == [True] * 5 + [False] * 7


def test_stops_when_every_row_has_ended(model, tokenizer, device):
    ids, mask = padded(PROMPTS[:1], tokenizer.pad_token_id, device)
    pad, P = tokenizer.pad_token_id, ids.shape[1]
    free = hf_greedy(model, ids, mask, 6, pad, -1)[:, P:]
    eos = int(free[0, 2])
    stop = free[0].tolist().index(eos)  # its first occurrence
    expected = hf_greedy(model, ids, mask, 6, pad, eos)
    ours = decode(model, ids, mask, 6, 0.0, 0, 1.0, pad, eos)
    assert ours.shape == expected.shape == (1, P + stop + 1)
    assert torch.equal(ours, expected)


def test_sampling_is_reproducible_from_the_global_seed(model, tokenizer, device):
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    args = (model, ids, mask, 10, 0.9, 50, 0.95, tokenizer.pad_token_id, tokenizer.eos_token_id)
    torch.manual_seed(3)
    first = decode(*args)
    torch.manual_seed(3)
    assert torch.equal(decode(*args), first)
    torch.manual_seed(4)
    assert not torch.equal(decode(*args), first)


def test_rollout_generate_restores_training_mode(model, tokenizer):
    model.train()
    try:
        out = rollout.generate(model, PROMPTS, 5, 1.0, 1.0, 0, tokenizer.pad_token_id,
                               tokenizer.eos_token_id)
        assert model.training
    finally:
        model.eval()
    assert out.input_ids.shape[0] == len(PROMPTS) and out.prompt_width == 7


@pytest.mark.parametrize("lora", [False, True])
def test_decode_raises_no_deprecation_warning(model, tokenizer, lora, device):
    """The decode loop uses transformers' current API: a newcomer's terminal shows only our
    progress, not a FutureWarning per PPO iteration (issue 12)."""
    import warnings

    policy = apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, r=4)) if lora else model
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode(policy.eval(), ids, mask, 4, 1.0, 0, 1.0, tokenizer.pad_token_id,
               tokenizer.eos_token_id)
    deprecations = [str(w.message) for w in caught
                    if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert deprecations == []

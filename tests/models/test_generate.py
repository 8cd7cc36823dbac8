"""The rollout decode loop (rlhfkit/models/generate.py) against HF ``generate`` on tiny-llama: greedy
token for token with left padding, EOS handling and the output width, seeded sampling; its
log-probs and entropy against the trainer's forward on the same tokens (rollout fidelity)."""
import copy

import pytest
import torch
from transformers import GenerationConfig

from rlhfkit.config import LoraConfig
from rlhfkit.data import left_pad
from rlhfkit.models import apply_lora, load_causal_lm
from rlhfkit.models.forward import response_logprobs
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
    ours = decode(model, ids, mask, 16, temperature, top_k, 1.0, tokenizer.pad_token_id, eos).ids
    assert torch.equal(ours, expected)
    responses = expected[:, ids.shape[1]:]
    assert len({tuple(r) for r in responses.tolist()}) == len(PROMPTS)  # rows differ: a real test
    assert all(len(set(r)) > 3 for r in responses.tolist())  # and do not repeat one token


def test_compiled_decode_equals_eager_and_hf_generate(model, tokenizer, device):
    """rollout.compile: the torch.compile'd decode step (static cache length 64 for 7 + 16,
    whole-cache mask) gives HF's greedy tokens, and the eager loop's log-probs to float
    rounding. A second call of another width reuses the compiled step (same (B, L))."""
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    expected = hf_greedy(model, ids, mask, 16, pad, eos)
    eager = decode(model, ids, mask, 16, 0.0, 0, 1.0, pad, eos)
    compiled = decode(model, ids, mask, 16, 0.0, 0, 1.0, pad, eos, compile=True)
    assert torch.equal(eager.ids, expected) and torch.equal(compiled.ids, expected)
    torch.testing.assert_close(compiled.logprobs, eager.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled.entropy, eager.entropy, atol=1e-5, rtol=0)
    short = decode(model, ids[:, 3:], mask[:, 3:], 20, 0.0, 0, 1.0, pad, eos, compile=True)
    assert torch.equal(short.ids, hf_greedy(model, ids[:, 3:], mask[:, 3:], 20, pad, eos))


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
    assert torch.equal(decode(policy, ids, mask, 8, 0.0, 0, 1.0, tokenizer.pad_token_id,
                              eos).ids, expected)


def test_eos_stops_a_row_then_pads_like_hf(model, tokenizer, device):
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    pad, P = tokenizer.pad_token_id, ids.shape[1]
    free = hf_greedy(model, ids, mask, 12, pad, -1)[:, P:]  # no EOS: the greedy continuations
    eos = int(free[2, 4])  # a token row 2 emits at step 4 (and not before) acts as EOS
    assert eos not in free[2, :4].tolist()
    expected = hf_greedy(model, ids, mask, 12, pad, eos)
    ours = decode(model, ids, mask, 12, 0.0, 0, 1.0, pad, eos).ids
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
    ours = decode(model, ids, mask, 6, 0.0, 0, 1.0, pad, eos).ids
    assert ours.shape == expected.shape == (1, P + stop + 1)
    assert torch.equal(ours, expected)


def test_sampling_is_reproducible_from_the_global_seed(model, tokenizer, device):
    ids, mask = padded(PROMPTS, tokenizer.pad_token_id, device)
    args = (model, ids, mask, 10, 0.9, 50, 0.95, tokenizer.pad_token_id, tokenizer.eos_token_id)
    torch.manual_seed(3)
    first = decode(*args)
    torch.manual_seed(3)
    again = decode(*args)
    assert torch.equal(again.ids, first.ids) and torch.equal(again.logprobs, first.logprobs)
    torch.manual_seed(4)
    assert not torch.equal(decode(*args).ids, first.ids)


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


# nats: sampler vs trainer log-probs in float32 (rollout.old_logprobs: auto). Measured on this
# model (16 rows × 24 tokens, T 1 / 0.7, LoRA too): mean |Δ| 1–2e-6, max 1.1e-5.
SAMPLER_TOLERANCE = 5e-5


@pytest.mark.parametrize("lora,temperature,top_k,top_p,compile", [
    (False, 1.0, 0, 1.0, False), (False, 0.7, 50, 0.95, False), (True, 0.7, 0, 1.0, False),
    (False, 1.0, 0, 1.0, True)])
def test_sampler_logprobs_equal_the_trainers_forward(model, tokenizer, lora, temperature, top_k,
                                                     top_p, compile, device):
    """The decode loop's log-prob of each sampled token and its entropy (KV cache, last-position
    logits, W·xᵀ linears) equal the trainer's forward over the whole sequence
    (``forward.response_logprobs``: softmax of logits / T over the whole vocabulary, whatever
    top-k / top-p the token was drawn through) to 5e-5 nats on tiny-llama in float32, same
    weights, no dropout (LoRA too): the tolerance under which PPO takes its old log-probs from
    the sampling pass (online/loop.py::sampler_stands_for_trainer). The compiled decode step
    (rollout.compile) too."""
    policy = model
    if lora:
        policy = apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, r=4))
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    policy.eval()
    torch.manual_seed(5)
    out = rollout.generate(policy, PROMPTS, 12, temperature, top_p, top_k,
                           tokenizer.pad_token_id, tokenizer.eos_token_id, compile)
    P, mask = out.prompt_width, out.response_mask
    with torch.no_grad():
        trainer = response_logprobs(policy, out.input_ids, out.attention_mask,
                                    out.sequence_response_mask, True, temperature)
    lp, ent = trainer.logprobs[:, P - 1:], trainer.entropy[:, P - 1:]
    gap = (out.sampler_logprobs - lp)[mask].abs().max().item()
    assert gap <= SAMPLER_TOLERANCE, gap
    torch.testing.assert_close(out.sampler_entropy[mask], ent[mask], atol=SAMPLER_TOLERANCE,
                               rtol=0)
    assert (out.sampler_logprobs[~mask] == 0).all() and (out.sampler_logprobs[mask] < 0).all()
    assert out.sampler_logprobs.shape == mask.shape and mask.sum() > 20  # a real comparison

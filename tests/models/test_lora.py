"""rlhfkit/models/lora.py: LoRA through peft, from plain settings (models/ sits below the
config: it reads what it needs off any object, never imports rlhfkit.config)."""
import ast
import types
import warnings
from pathlib import Path

import rlhfkit.models
from rlhfkit.models import apply_lora, load_causal_lm

MODELS_DIR = Path(rlhfkit.models.__file__).parent


def test_models_never_import_the_config():
    for path in sorted(MODELS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "rlhfkit.config" or n.startswith("rlhfkit.config.")
                           for n in names), f"{path.name} imports the config"


def test_apply_lora_from_plain_settings_without_warnings(tokenizer):
    settings = types.SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = apply_lora(load_causal_lm("tiny-llama", tokenizer), settings)
    # peft reads a property transformers deprecated; a newcomer's terminal shows none of it.
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "q_proj" in n for n in trainable)
    lora_a = next(p for n, p in policy.named_parameters() if "lora_A" in n)
    assert lora_a.shape[0] == 4 and policy.peft_config["default"].lora_alpha == 8.0


def test_interpolated_scales_the_adapters_weight_change_and_restores_it(tokenizer):
    import torch

    from rlhfkit.models import interpolated

    settings = types.SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj",))
    policy = apply_lora(load_causal_lm("tiny-llama", tokenizer), settings)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B is no longer 0
        for name, p in policy.named_parameters():
            if ".lora_B." in name:
                p.normal_()
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    w0 = layer.base_layer.weight.detach().clone()
    delta = layer.get_delta_weight("default").detach().clone()
    before = [p.detach().clone() for p in policy.parameters()]
    with interpolated(policy, 0.25) as model:
        torch.testing.assert_close(layer.get_delta_weight("default"), 0.25 * delta)
        torch.testing.assert_close(layer.base_layer.weight, w0)  # the base weights untouched
        assert model is policy
    for p, kept in zip(policy.parameters(), before, strict=True):
        torch.testing.assert_close(p, kept)  # the trained adapter back
    with interpolated(policy, 1.0):
        torch.testing.assert_close(layer.get_delta_weight("default"), delta)


def test_interpolated_moves_a_full_model_towards_its_reference(tokenizer):
    import copy

    import pytest
    import torch

    from rlhfkit.models import interpolated

    reference = load_causal_lm("tiny-llama", tokenizer)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)  # trained: every weight moved by +1
    trained = [p.detach().clone() for p in policy.parameters()]
    with interpolated(policy, 0.5, reference):
        for p, r in zip(policy.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, r + 0.5)
    for p, kept in zip(policy.parameters(), trained, strict=True):
        torch.testing.assert_close(p, kept)
    with pytest.raises(ValueError, match="needs its initial weights"):
        with interpolated(policy, 0.5):
            pass


def test_averaged_takes_the_mean_of_the_adapters_weight_changes_and_restores_them(tokenizer):
    """Two iterates of an adapter: meanwhile the mean of their weight changes exactly (an
    adapter of rank 2r, the scaling kept; the saved config says r 8, alpha 16), then the same
    parameter objects back (the optimiser holds them) with the trained values."""
    import torch

    from rlhfkit.models import averaged, trained_weights

    settings = types.SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj",))
    policy = apply_lora(load_causal_lm("tiny-llama", tokenizer), settings)
    layers = [block.self_attn.q_proj for block in policy.base_model.model.model.layers]
    layer = layers[0]
    torch.manual_seed(0)
    iterates, deltas, all_deltas = [], [], []
    for _ in range(2):
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if ".lora_" in name:
                    p.normal_()
        iterates.append(trained_weights(policy))
        deltas.append(layer.get_delta_weight("default").detach().clone())
        all_deltas.append([q.get_delta_weight("default").detach().clone() for q in layers])
    assert all(not p.requires_grad for n, p in policy.named_parameters() if ".lora_" not in n)
    params = [(n, p, p.detach().clone()) for n, p in policy.named_parameters()]
    w0 = layer.base_layer.weight.detach().clone()
    ids = torch.tensor([[1, 5, 9, 3]])
    with averaged(policy, iterates) as model:
        torch.testing.assert_close(layer.get_delta_weight("default"), (deltas[0] + deltas[1]) / 2)
        torch.testing.assert_close(layer.base_layer.weight, w0)
        assert layer.lora_A["default"].weight.shape[0] == 8
        assert (policy.peft_config["default"].r, policy.peft_config["default"].lora_alpha) == \
            (8, 16.0)
        averaged_logits = model(ids).logits
    bases = [q.base_layer.weight.detach().clone() for q in layers]
    with torch.no_grad():  # the same output as the base with the mean changes merged
        for q, first, second in zip(layers, *all_deltas, strict=True):
            q.base_layer.weight += (first + second) / 2
        with policy.disable_adapter():
            torch.testing.assert_close(policy(ids).logits, averaged_logits, rtol=1e-4, atol=1e-4)
        for q, base in zip(layers, bases, strict=True):
            q.base_layer.weight.copy_(base)
    assert (policy.peft_config["default"].r, policy.peft_config["default"].lora_alpha) == (4, 8.0)
    for (name, p, kept), (name2, p2) in zip(params, policy.named_parameters(), strict=True):
        assert name == name2 and p is p2
        torch.testing.assert_close(p, kept)
    with averaged(policy, []):
        torch.testing.assert_close(layer.get_delta_weight("default"), deltas[1])


def test_averaged_takes_the_mean_of_a_full_models_iterates(tokenizer):
    import torch

    from rlhfkit.models import averaged, trained_weights

    policy = load_causal_lm("tiny-llama", tokenizer)
    first = trained_weights(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    second = trained_weights(policy)
    with averaged(policy, [first, second]):
        for name, p in policy.named_parameters():
            torch.testing.assert_close(p, first[name] + 0.5)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p, second[name])

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

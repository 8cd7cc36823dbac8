"""Roles of the online stages (rlhfkit/online/roles.py): dropout is off in every trained model,
so the update's first forward (train mode) equals the scoring pass (eval mode)."""
import json

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.models import loading
from rlhfkit.online import ppo

DROPOUT = 0.5


@pytest.fixture
def tiny_llama_with_attention_dropout(monkeypatch):
    """tiny-llama built with attention_dropout > 0 (policy, reference and critic alike)."""
    plain = loading.tiny_llama_config

    def with_dropout(tokenizer):
        config = plain(tokenizer)
        config.attention_dropout = DROPOUT
        return config

    monkeypatch.setattr(loading, "tiny_llama_config", with_dropout)


@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_first_ppo_ratio_is_one_with_dropout_in_the_model(repo_root, tmp_path, layout,
                                                          tiny_llama_with_attention_dropout,
                                                          on_device):
    """One epoch of one minibatch: the update's ratio π/π_old must be exactly 1 (approx_kl and
    clipfrac 0), though LoRA and attention dropout are 0.5 and the update runs in train mode."""
    cfg = load_config(ppo.PPOConfig, str(repo_root / "examples/ppo_tiny.yaml"), [
        f"output_dir={tmp_path}", f"data.train_path={repo_root}/data/tiny/prompts.jsonl",
        "model.lora.enabled=true", f"model.lora.dropout={DROPOUT}", f"critic.layout={layout}",
        "ppo.ppo_epochs=1", "ppo.minibatches=1", "train.batch_size=4", "train.max_steps=1",
        "rollout.temperature=1.0",
        # the scoring forward (eval mode) against the update's (train mode), as this test means;
        # the sampler's log-probs differ from both by float rounding (test_generate.py)
        "rollout.old_logprobs=forward", *on_device])
    ppo.run(cfg)
    (metrics,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("step") == 1]
    assert metrics["approx_kl"] == 0.0 and metrics["clipfrac"] == 0.0, metrics


def test_roles_switch_every_dropout_off(repo_root, tmp_path, tiny_llama_with_attention_dropout,
                                        on_device):
    from rlhfkit.models import load_tokenizer
    from rlhfkit.online.roles import build_roles
    from rlhfkit.trainers import common

    cfg = load_config(ppo.PPOConfig, str(repo_root / "examples/ppo_tiny.yaml"), [
        f"output_dir={tmp_path}", "model.lora.enabled=true", f"model.lora.dropout={DROPOUT}",
        *on_device])
    roles = build_roles(common.start_run(cfg), cfg, load_tokenizer("tiny-llama"), 1)
    trained = [roles.actor, roles.critic]
    rates = [(name, m.p) for model in trained for name, m in model.named_modules()
             if isinstance(m, torch.nn.Dropout)]
    assert rates and all(p == 0.0 for _, p in rates), rates  # LoRA's dropout modules
    attention = [m.attention_dropout for model in trained for m in model.modules()
                 if hasattr(m, "attention_dropout")]
    assert attention and all(p == 0.0 for p in attention), attention

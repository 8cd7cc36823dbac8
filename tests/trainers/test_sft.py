"""SFT stage on tiny-llama: prompt masking, LoRA/full artefacts, resume, accumulation."""
import shutil

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.data import Encoded, collate_sequences
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.trainers import checkpoints, common, sft

TINY = "examples/sft_tiny.yaml"


def config(repo_root, out, *overrides):
    return load_config(sft.SFTConfig, str(repo_root / TINY),
                       [f"output_dir={out}", f"data.train_path={repo_root}/data/tiny/sft.jsonl",
                        *overrides])


def test_loss_counts_response_tokens_only(tokenizer, device):
    """Would fail if prompt tokens counted: compare with the hand-built response-only NLL."""
    model = load_causal_lm("tiny-llama", tokenizer).to(device)
    batch = collate_sequences([Encoded([5, 6, 7, 8], [9, 10, 2]), Encoded([5, 6], [11, 2])],
                              tokenizer.pad_token_id).to(device)
    nll_sum, count = sft.sft_loss_sums(model, batch)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    token_nll = -torch.log_softmax(logits[:, :-1], -1).gather(
        -1, batch.input_ids[:, 1:, None])[..., 0]
    response = batch.response_mask[:, 1:]
    assert count.item() == 5  # 3 + 2 response tokens, EOS included; 4 + 2 prompt tokens not
    assert torch.allclose(nll_sum, token_nll[response].sum(), atol=1e-4)
    everything = token_nll[batch.attention_mask[:, 1:]].sum()
    assert not torch.allclose(nll_sum, everything, atol=1e-1)


def test_full_run_writes_artefacts_and_loss_falls(repo_root, tmp_path, on_device):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    sft.run(config(repo_root, out, *on_device, "train.max_steps=12"))
    for name in ("config.yaml", "metrics.jsonl", "final/config.json", "checkpoint-12"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard" / "rlhfkit").glob("events.*"))  # train.project_name
    before, *rows = common.read_metrics(out)
    assert before["step"] == 0 and rows[-1]["eval_loss"] < before["eval_loss"]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    AutoModelForCausalLM.from_pretrained(out / "final")


def test_lora_run_saves_merged_and_adapter(repo_root, tmp_path, tokenizer, on_device):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    sft.run(config(repo_root, out, *on_device, "train.max_steps=4", "model.lora.enabled=true",
                   "model.lora.r=4", "train.learning_rate=1e-2"))
    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    assert (out / "final/adapter/adapter_config.json").exists()
    base = load_causal_lm("tiny-llama", tokenizer)  # the same random init the run started from
    with_adapter = PeftModel.from_pretrained(base, out / "final/adapter").merge_and_unload()
    for (name, p), q in zip(merged.named_parameters(), with_adapter.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    rows = common.read_metrics(out)
    assert rows[-1]["loss"] < rows[1]["loss"]


def test_resume_equals_uninterrupted(repo_root, tmp_path, on_device):
    """A run that dies after step 5 (checkpoint at 3) and resumes gives the same metrics."""
    args = (*on_device, "train.max_steps=6", "train.save_every=3", "train.eval_every=2")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    sft.run(config(repo_root, whole, *args))
    sft.run(config(repo_root, broken, *args))
    # Simulate a crash during step 6: checkpoint-6 and final/ never written, step 6 not logged.
    shutil.rmtree(broken / "checkpoint-6")
    shutil.rmtree(broken / "final")
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join(lines[:6]) + "\n")  # steps 0..5
    sft.run(config(repo_root, broken, *args, "resume=true"))
    assert common.read_metrics(broken) == common.read_metrics(whole)


def test_lora_checkpoint_holds_only_trained_weights_and_resumes_exactly(repo_root, tmp_path,
                                                                        on_device):
    """A LoRA checkpoint stores the adapter, not the frozen base (rebuilt on resume), and the
    resumed run still equals the uninterrupted one."""
    from safetensors import safe_open

    args = (*on_device, "train.max_steps=4", "train.save_every=2", "model.lora.enabled=true",
            "model.lora.r=4", "train.learning_rate=1e-2")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    sft.run(config(repo_root, whole, *args))
    with safe_open(str(whole / "checkpoint-4" / "model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert keys and all("lora_" in key for key in keys), keys[:5]
    shutil.copytree(whole, broken)
    shutil.rmtree(broken / "checkpoint-4")
    shutil.rmtree(broken / "final")
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # steps 0..2
    sft.run(config(repo_root, broken, *args, "resume=true"))
    assert common.read_metrics(broken) == common.read_metrics(whole)
    # A checkpoint that does not fit the model stops the resume instead of loading nothing:
    # a full model misses its trained weights there, and the adapter keys are unknown to it.
    full = load_causal_lm("tiny-llama", load_tokenizer("tiny-llama"))
    with pytest.raises(RuntimeError, match="does not fit the model"):
        checkpoints.check_saved_weights([full], whole / "checkpoint-2")


def test_rerun_into_same_output_dir_replaces_the_metrics(repo_root, tmp_path, on_device):
    """Without resume=true a second run starts metrics.jsonl afresh instead of appending."""
    sft.run(config(repo_root, tmp_path / "run", *on_device, "train.max_steps=2"))
    first = common.read_metrics(tmp_path / "run")
    sft.run(config(repo_root, tmp_path / "run", *on_device, "train.max_steps=2"))
    assert common.read_metrics(tmp_path / "run") == first


def test_accumulation_equals_one_big_batch(repo_root, tmp_path, on_device):
    """Micro-batches of 2 × 4 accumulation steps == one batch of 8 (global token count)."""
    sft.run(config(repo_root, tmp_path / "a", *on_device, "train.max_steps=3"))
    sft.run(config(repo_root, tmp_path / "b", *on_device, "train.max_steps=3",
                   "train.micro_batch_size=2"))
    a, b = common.read_metrics(tmp_path / "a")[1:], common.read_metrics(tmp_path / "b")[1:]
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


def test_batches_depend_only_on_seed_and_step():
    first = [common.batch_rows(10, 4, step, seed=1) for step in range(5)]
    assert first == [common.batch_rows(10, 4, step, seed=1) for step in range(5)]
    epoch = sorted(sum(first[:2], []) + first[2][:2])  # steps 0..2 cover 10 rows once
    assert epoch == list(range(10))
    assert common.micro_batches([0, 1, 2, 3, 4, 5, 6, 7], 1, 2, 2) == [[1, 3], [5, 7]]

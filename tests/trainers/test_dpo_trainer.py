"""DPO stage on tiny-llama: references agree, padding invariance, resume, artefacts, eval_only.

The loss functions themselves have hand values in tests/ops/test_dpo.py.
"""
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import ConfigError, LoraConfig, load_config
from rlhfkit.data import Encoded
from rlhfkit.models import apply_lora, load_causal_lm
from rlhfkit.models.packing import PackedBatch
from rlhfkit.ops import PreferenceLogps
from rlhfkit.trainers import common, dpo, dpo_reference
from rlhfkit.trainers.dpo_reference import Reference, pair_batch, seq_logprobs

TINY = "examples/dpo_tiny.yaml"
SMALL = ("data.max_rows=16", "train.batch_size=4")  # a run's cost is mostly fixed: keep it small
FAST = ("train.warmup_steps=0", "train.save_every=0", "train.eval_every=0", *SMALL)


def config(repo_root, out, *overrides):
    return load_config(dpo.DPOConfig, str(repo_root / TINY),
                       [f"output_dir={out}", f"data.train_path={repo_root}/data/tiny/pairs.jsonl",
                        *overrides])


def losses(out):
    return [row["loss"] for row in common.read_metrics(out) if "loss" in row]


@pytest.fixture(scope="module")
def trained_on(repo_root, tmp_path_factory):
    """The tiny example, shortened: 8 steps with evaluation at 0, 4 and 8; once per device."""
    runs = {}

    def train(on_device: tuple):
        out = tmp_path_factory.mktemp("dpo") / "tiny"
        dpo.run(config(repo_root, out, *on_device, "train.max_steps=8", "train.eval_every=4"))
        return out

    return lambda on_device: runs.get(on_device) or runs.setdefault(on_device, train(on_device))


@pytest.fixture
def trained(trained_on, on_device):
    return trained_on(on_device)


def test_tiny_example_loss_falls_and_artefacts_load(trained):
    from transformers import AutoModelForCausalLM

    for name in ("config.yaml", "metrics.jsonl", "ref_logps.pt", "timing.json",
                 "final/config.json", "checkpoint-8"):
        assert (trained / name).exists(), name
    rows = common.read_metrics(trained)
    assert [r["step"] for r in rows] == list(range(9))
    before, after = rows[0], rows[-1]
    # Step 0 is the held-out evaluation before training: policy == reference.
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["eval_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert sum(losses(trained)[-3:]) / 3 < math.log(2) - 0.1
    assert after["reward_accuracy"] > 0.5 and after["reward_margin"] > 0
    assert after["eval_loss"] < before["eval_loss"]
    for key in ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps",
                "logp_accuracy", "grad_norm", "lr", "pairs"):
        assert key in after, key
    AutoModelForCausalLM.from_pretrained(trained / "final")


def test_lora_run_saves_merged_and_adapter(repo_root, tmp_path, tokenizer, on_device):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    dpo.run(config(repo_root, out, *on_device, *FAST, "train.max_steps=3",
                   "model.lora.enabled=true", "model.lora.r=4", "train.learning_rate=1e-2",
                   "dpo.reference=adapter"))
    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    base = load_causal_lm("tiny-llama", tokenizer)
    with_adapter = PeftModel.from_pretrained(base, out / "final/adapter").merge_and_unload()
    for (name, p), q in zip(merged.named_parameters(), with_adapter.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert losses(out)[-1] < math.log(2)


def test_precomputed_reference_equals_on_the_fly(repo_root, tmp_path, on_device):
    """Reference log-probs stored before training give the losses of a frozen copy per step."""
    args = (*on_device, *FAST, "train.max_steps=3")
    dpo.run(config(repo_root, tmp_path / "pre", *args, "dpo.reference=precomputed"))
    dpo.run(config(repo_root, tmp_path / "copy", *args, "dpo.reference=copy"))
    pre, copy = losses(tmp_path / "pre"), losses(tmp_path / "copy")
    assert len(pre) == 3 and abs(pre[-1] - math.log(2)) > 1e-4  # the policy left the reference
    assert pre == pytest.approx(copy, abs=1e-5)


def _pairs(tokenizer):
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [dpo.EncodedPair(Encoded(ids("Movie review:"), ids(" Great fun.") + [2]),
                            Encoded(ids("Movie review:"), ids(" Dull and far too long.") + [2])),
            dpo.EncodedPair(Encoded(ids("Phone review:"), ids(" The battery lasts for days, "
                                                         "and the screen is sharp.") + [2]),
                            Encoded(ids("Phone review:"), ids(" Broke.") + [2]))]


def test_adapter_reference_equals_frozen_copy(tokenizer, device):
    """Adapter switched off == the base weights, even once the adapter has moved."""
    base = load_causal_lm("tiny-llama", tokenizer).to(device)
    policy = apply_lora(load_causal_lm("tiny-llama", tokenizer), LoraConfig(r=4)).to(device)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: the policy now differs from the base
    batch = pair_batch(_pairs(tokenizer), tokenizer.pad_token_id).to(device)
    data = dpo.PreferenceData(_pairs(tokenizer))
    off = Reference("adapter").logps(policy, data, [0, 1], batch)
    frozen = Reference("copy", base).logps(policy, data, [0, 1], batch)
    assert torch.allclose(off, frozen, atol=1e-5)
    assert not torch.allclose(seq_logprobs(policy, batch)[0], frozen, atol=1e-2)


def test_shared_prompt_rows_equal_one_row_per_response(tokenizer, device):
    """dpo.share_prompt packs each pair into one row: same log-probs, chosen first, and the
    same gradient, to 1e-5 (the fast path must not change the math)."""
    model = load_causal_lm("tiny-llama", tokenizer).to(device)
    pad = tokenizer.pad_token_id
    results = []
    for share in (False, True):
        model.zero_grad()
        batch = pair_batch(_pairs(tokenizer), pad, share).to(device)
        logps, lengths = seq_logprobs(model, batch)
        (logps * torch.tensor([1.0, -2.0, 0.5, 3.0], device=device)).sum().backward()
        results.append((logps.detach(), lengths, [p.grad.clone() for p in model.parameters()]))
    (rows, row_lengths, row_grads), (packed, packed_lengths, packed_grads) = results
    assert isinstance(pair_batch(_pairs(tokenizer), pad, True), PackedBatch)
    torch.testing.assert_close(packed, rows, atol=1e-5, rtol=0)
    assert packed_lengths.tolist() == row_lengths.tolist()
    for a, b in zip(packed_grads, row_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_seq_logprobs_padding_invariant(tokenizer, device):
    """Extra padding, other rows and row order never change a pair's sequence log-probs."""
    model = load_causal_lm("tiny-llama", tokenizer).to(device)
    pad = tokenizer.pad_token_id
    short, long_ = _pairs(tokenizer)
    alone, lengths = seq_logprobs(model, pair_batch([short], pad).to(device))  # (2,)
    mixed = seq_logprobs(model, pair_batch([long_, short], pad).to(device))[0]  # (4,)
    assert torch.allclose(mixed[[1, 3]], alone, atol=1e-5)
    batch = pair_batch([short], pad).to(device)
    extra = 7  # append pure padding columns
    pads = torch.full((2, extra), pad, device=device)
    no = torch.zeros(2, extra, dtype=bool, device=device)
    padded = type(batch)(torch.cat([batch.input_ids, pads], 1),
                         torch.cat([batch.attention_mask, no], 1),
                         torch.cat([batch.response_mask, no], 1))
    assert torch.allclose(seq_logprobs(model, padded)[0], alone, atol=1e-5)
    # Summed over response tokens only (EOS included): " Great fun." + EOS, etc.
    assert lengths.tolist() == [len(short.chosen.response_ids), len(short.rejected.response_ids)]


def test_resume_equals_uninterrupted(repo_root, tmp_path, monkeypatch, on_device):
    """Dies after the checkpoint at 3, resumes: same metrics.jsonl, reference not recomputed."""
    args = (*on_device, "train.max_steps=6", "train.save_every=3", "train.eval_every=2",
            "train.warmup_steps=0", *SMALL)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    dpo.run(config(repo_root, whole, *args))
    dpo.run(config(repo_root, broken, *args))
    # Simulate a crash during step 6: checkpoint-6 and final/ never written, step 6 not logged.
    shutil.rmtree(broken / "checkpoint-6")
    shutil.rmtree(broken / "final")
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join(lines[:6]) + "\n")  # steps 0..5
    monkeypatch.setattr(dpo_reference, "precompute_reference",
                        lambda *a, **k: pytest.fail("recomputed"))
    dpo.run(config(repo_root, broken, *args, "resume=true"))
    assert common.read_metrics(broken) == common.read_metrics(whole)


def test_eval_only_matches_naive_logprobs(repo_root, trained, tokenizer, capsys, on_device):
    """eval_only scores a trained policy against the initial model: per-pair log-probs equal a
    naive full-logits log_softmax, and the loss is the mean of DPO's −log σ(βz)."""
    from transformers import AutoModelForCausalLM

    out = trained.parent / "eval_only"
    metrics = dpo.run(config(repo_root, out, *on_device, "eval_only=true",
                             f"model.name={trained}/final",
                             "dpo.ref_model=tiny-llama", "data.max_eval_rows=5"))
    assert '"eval_loss"' in capsys.readouterr().out  # printed as JSON
    rows = [json.loads(line) for line in (out / "eval_pairs.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(5))
    assert common.read_metrics(out)[0]["eval_loss"] == pytest.approx(metrics["eval_loss"])
    z = [(r["policy_chosen"] - r["ref_chosen"]) - (r["policy_rejected"] - r["ref_rejected"])
         for r in rows]
    expected = sum(math.log1p(math.exp(-0.1 * v)) for v in z) / 5  # −log σ(βz), β = 0.1
    assert metrics["eval_loss"] == pytest.approx(expected, abs=1e-6)
    assert metrics["eval_loss"] < math.log(2)

    policy = AutoModelForCausalLM.from_pretrained(trained / "final")
    cfg = config(repo_root, out)
    from rlhfkit.data import load_examples
    pair = dpo.encode_pairs(load_examples(cfg.data.train_path, "ranked", 1), tokenizer, cfg.data)[0]
    ids = torch.tensor([pair.chosen.prompt_ids + pair.chosen.response_ids])
    logp = torch.log_softmax(policy(input_ids=ids).logits[0, :-1], -1)
    targets = ids[0, 1:]
    naive = logp[torch.arange(len(targets)), targets][len(pair.chosen.prompt_ids) - 1:].sum()
    assert rows[0]["policy_chosen"] == pytest.approx(naive.item(), abs=1e-4)


def test_eval_only_policy_as_reference_is_log2(repo_root, tmp_path, on_device):
    metrics = dpo.run(config(repo_root, tmp_path / "e", *on_device, "eval_only=true",
                             "data.max_eval_rows=4"))
    assert metrics["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["eval_reward_accuracy"] == 0.0


def test_simpo_runs_reference_free(repo_root, tmp_path, monkeypatch, tokenizer, on_device):
    monkeypatch.setattr(dpo_reference, "precompute_reference",
                        lambda *a, **k: pytest.fail("no reference"))
    out = tmp_path / "simpo"
    dpo.run(config(repo_root, out, *on_device, *FAST, "train.max_steps=3", "dpo.loss_type=simpo",
                   "dpo.beta=2.0", "dpo.gamma=0.5"))
    rows = common.read_metrics(out)
    assert all(math.isfinite(r["loss"]) for r in rows[1:]) and "eval_reward_margin" in rows[-1]
    # SimPO's reward is β × per-token log-prob: ≈ 2 × −log(49152) = −21.6 at random init.
    assert rows[1]["chosen_rewards"] == pytest.approx(-2 * math.log(len(tokenizer)), abs=3)


def test_evaluate_keeps_every_sum_on_the_run_device(monkeypatch):
    """Every tensor evaluate hands to common.global_sum lies on run.device. On CUDA the pair
    count stayed on the CPU beside metric sums on the GPU and stacking them crashed the step-0
    evaluation; here the "meta" device stands in for the accelerator, and a stand-in
    batch_loss returns what a model on that device would: (B,) tensors there."""
    device = torch.device("meta")
    run = SimpleNamespace(device=device, rank=0, world_size=1, accelerator=None,
                          config=SimpleNamespace(dpo=dpo.DPOPart(eval_batch_size=2)))

    def batch_loss_on_device(run_, model, reference, data, idx, pad_id):
        zeros, ones = torch.zeros(len(idx), device=device), torch.ones(len(idx), device=device)
        logps = PreferenceLogps(zeros, zeros, zeros, zeros, ones, ones)
        return zeros, logps, dpo.metric_sums(logps, zeros, beta=0.1)

    handed = []

    def global_sum(accelerator, values):
        handed.extend((key, value.device) for key, value in values.items())
        return {key: 1.0 for key in values}

    monkeypatch.setattr(dpo, "batch_loss", batch_loss_on_device)
    monkeypatch.setattr(common, "global_sum", global_sum)
    metrics = dpo.evaluate(run, torch.nn.Linear(1, 1), None, dpo.PreferenceData([None] * 5), 0)
    assert "count" in dict(handed) and "eval_loss" in metrics
    assert [key for key, where in handed if where != device] == []


def test_rows_per_forward_hand_values():
    """512 tokens / 192 a packed pair (64 + 64 + 64) = 2 pairs; the cap only ever lowers
    train.micro_batch_size; never below one row; 0 = no cap (micro_batch_size as given)."""
    assert common.rows_per_forward(0, 512, 192) == 2
    assert common.rows_per_forward(0, 512, 128) == 4
    assert common.rows_per_forward(3, 512, 128) == 3
    assert common.rows_per_forward(8, 512, 1000) == 1
    assert common.rows_per_forward(0, 0, 192) == 0
    assert common.rows_per_forward(2, 0, 192) == 2
    pair = dpo.EncodedPair(Encoded([1] * 5, [2] * 3), Encoded([1] * 5, [3] * 4))
    assert dpo.pair_tokens(pair, packed=True) == 5 + 3 + 4
    assert dpo.pair_tokens(pair, packed=False) == 2 * (5 + 4)


def test_token_cap_equals_one_pass(repo_root, tmp_path, monkeypatch, on_device):
    """dpo.max_forward_tokens cuts a step into one pair per forward here (cap 1): the same
    losses and gradient norms as one pass over the batch (cap 0), to float summation order."""
    pieces = []
    accumulate = common.accumulate_step

    def counting(run, models, optimizers, schedulers, chunks, *rest, **kw):
        pieces.append(len(chunks))
        return accumulate(run, models, optimizers, schedulers, chunks, *rest, **kw)

    monkeypatch.setattr(common, "accumulate_step", counting)
    args = (*on_device, *FAST, "train.max_steps=3", "dpo.reference=copy")
    dpo.run(config(repo_root, tmp_path / "one", *args, "dpo.max_forward_tokens=0"))
    assert pieces == [1, 1, 1]
    pieces.clear()
    dpo.run(config(repo_root, tmp_path / "cut", *args, "dpo.max_forward_tokens=1"))
    assert pieces == [4, 4, 4]  # train.batch_size=4 pairs, one a forward
    one, cut = common.read_metrics(tmp_path / "one"), common.read_metrics(tmp_path / "cut")
    train = [(a, b) for a, b in zip(one, cut) if "loss" in a]
    assert len(train) == 3 and abs(train[-1][0]["loss"] - math.log(2)) > 1e-4
    for a, b in train:
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_reference_choices_are_checked(repo_root, tmp_path):
    with pytest.raises(ConfigError, match="dpo.reference='none' is invalid"):
        config(repo_root, tmp_path, "dpo.reference=none")
    with pytest.raises(ConfigError, match="dpo.reference='adapter' is invalid.*lora"):
        config(repo_root, tmp_path, "dpo.reference=adapter")
    with pytest.raises(ConfigError, match="dpo.loss_type='orpo' is invalid: expected one of"):
        config(repo_root, tmp_path, "dpo.loss_type=orpo")
    with pytest.raises(ConfigError, match="dpo.max_forward_tokens=-1 is invalid"):
        config(repo_root, tmp_path, "dpo.max_forward_tokens=-1")
    simpo = config(repo_root, tmp_path, "dpo.loss_type=simpo")
    assert simpo.dpo.reference_mode == "none"
    assert config(repo_root, tmp_path).dpo.reference_mode == "precomputed"


def test_two_processes_equal_one(repo_root, tmp_path):
    """torchrun × 2 (gloo on CPU) == one process: the loss divides by the global pair count."""
    import os
    import subprocess
    import sys

    def launch(out, nproc):
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd = prefix + ["-m", "rlhfkit", "dpo", "--config", TINY, f"output_dir={out}",
                        *FAST, "train.max_steps=3", "train.eval_every=3"]
        result = subprocess.run(cmd, cwd=repo_root, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return common.read_metrics(out)

    one, two = launch(tmp_path / "one", 1), launch(tmp_path / "two", 2)
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a.get("pairs") == b.get("pairs")
        for key in ("loss", "reward_margin", "eval_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)

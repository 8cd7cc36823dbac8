"""FSDP2 through accelerate on 2 CPU processes (gloo), launched as users launch it:
``accelerate launch --config_file examples/accelerate/fsdp2.yaml -m rlhfkit <stage> ...``.

- SFT and DPO: the loss curve of 2 sharded processes equals 1 process with the same global
  batch. Tolerance 1e-5 absolute on losses (SFT ~11, DPO ~0.69): DDP's
  (tests/trainers/test_distributed.py); 1e-6 relative on DPO's summed sequence log-probs
  (~ -190, seen 1.5e-5 apart: 8e-8 relative). The global counts are exact; only the order of
  float reductions differs (gradients reduce-scattered over shards instead of one sum).
- Every stage runs sharded: the checkpoints are torch.distributed.checkpoint shards, one per
  process (accelerate really took its FSDP2 path: trainers/common.py::shard_on_cpu), for the
  policy and PPO's critic alike.
- kill -9 of every process mid-run, then ``resume=true``: the same metrics.jsonl as the
  uninterrupted sharded run, exactly.
- ``final/`` written under FSDP2 loads with plain ``from_pretrained`` (a LlamaForCausalLM, no
  FSDP class) and gives one process's logits; LoRA's merged final/ equals base + its adapter/.
Each run is a few steps of tiny-llama; the launches dominate the time.
"""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from rlhfkit.trainers import common

FSDP2 = "examples/accelerate/fsdp2.yaml"
SFT = ("train.max_steps=6", "train.save_every=2", "train.eval_every=3")
DPO = ("train.max_steps=3", "train.save_every=3", "train.eval_every=3")
LOSS_TOLERANCE = 1e-5  # absolute, losses
LOGP_TOLERANCE = 1e-6  # relative, sums of log-probs over a response


def command(stage: str, out, overrides, processes: int, config_file: str = FSDP2) -> list[str]:
    prefix = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file,
        "--num_processes", str(processes)]
    return prefix + ["-m", "rlhfkit", stage, "--config", f"examples/{stage}_tiny.yaml",
                     f"output_dir={out}", *overrides]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")


def launch(repo_root, stage: str, out, overrides=(), processes: int = 2,
           config_file: str = FSDP2) -> list[dict]:
    result = subprocess.run(command(stage, out, overrides, processes, config_file),
                            cwd=repo_root, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return common.read_metrics(out)


def sharded_checkpoint(folder, model_index: int = 0) -> list:
    """The torch.distributed.checkpoint files of one model: one per process when sharded."""
    return sorted((folder / f"pytorch_model_fsdp_{model_index}").glob("*.distcp"))


@pytest.fixture(scope="module")
def sft_runs(repo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2_sft")
    one = launch(repo_root, "sft", root / "one", SFT, processes=1)
    two = launch(repo_root, "sft", root / "two", SFT)
    return root, one, two


def assert_same_curve(one: list[dict], two: list[dict], keys: tuple) -> None:
    assert [row["step"] for row in one] == [row["step"] for row in two]
    for a, b in zip(one, two):
        for key in keys:
            if key in a:
                tolerance = dict(rel=LOGP_TOLERANCE) if key.endswith("logps") else \
                    dict(abs=LOSS_TOLERANCE)
                assert b[key] == pytest.approx(a[key], **tolerance), (a["step"], key)


def test_sft_two_sharded_processes_equal_one(sft_runs):
    root, one, two = sft_runs
    assert len(sharded_checkpoint(root / "two" / "checkpoint-6")) == 2
    assert [row["tokens"] for row in one if "tokens" in row] == \
        [row["tokens"] for row in two if "tokens" in row]
    assert_same_curve(one, two, ("loss", "eval_loss"))
    assert one[-1]["loss"] < one[1]["loss"]  # it trains


def test_ddp_config_equals_one_process(sft_runs, repo_root):
    """examples/accelerate/ddp.yaml: data parallel, whole weights in every process."""
    root, one, _ = sft_runs
    ddp = launch(repo_root, "sft", root / "ddp", SFT, config_file="examples/accelerate/ddp.yaml")
    assert (root / "ddp" / "checkpoint-6" / "model.safetensors").exists()  # not sharded
    assert_same_curve(one, ddp, ("loss", "eval_loss"))


def test_final_loads_with_plain_from_pretrained(sft_runs):
    from transformers import AutoModelForCausalLM

    root, _, _ = sft_runs
    sharded = AutoModelForCausalLM.from_pretrained(root / "two" / "final")
    single = AutoModelForCausalLM.from_pretrained(root / "one" / "final")
    assert type(sharded).__name__ == "LlamaForCausalLM"
    assert json.loads((root / "two" / "final" / "config.json").read_text())[
        "architectures"] == ["LlamaForCausalLM"]
    ids = torch.tensor([[1, 42, 7, 99, 5, 3]])
    with torch.no_grad():
        a, b = sharded(ids).logits, single(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_kill_and_resume_continues_exactly(sft_runs, repo_root):
    """kill -9 of the launcher and both workers after the step-2 checkpoint, then resume."""
    import psutil

    root, _, uninterrupted = sft_runs
    out = root / "killed"
    process = subprocess.Popen(command("sft", out, SFT, 2), cwd=repo_root, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    tree = [process.pid] + [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    for pid in tree:  # the workers run in sessions of their own: kill each one
        os.kill(pid, 9)
    process.wait()
    assert not (out / "final").exists(), "the run ended before the kill: nothing was tested"
    resumed = launch(repo_root, "sft", out, (*SFT, "resume=true"))
    assert resumed == uninterrupted


def test_dpo_two_sharded_processes_equal_one(repo_root, tmp_path):
    one = launch(repo_root, "dpo", tmp_path / "one", DPO, processes=1)
    two = launch(repo_root, "dpo", tmp_path / "two", DPO)
    assert len(sharded_checkpoint(tmp_path / "two" / "checkpoint-3")) == 2
    assert_same_curve(one, two, ("loss", "eval_loss", "chosen_logps", "rejected_logps"))


def test_reward_model_runs_sharded(repo_root, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rows = launch(repo_root, "rm", tmp_path, ("train.max_steps=2", "train.save_every=2",
                                              "train.eval_every=2"))
    assert [row["step"] for row in rows] == [1, 2] and "eval_loss" in rows[-1]
    assert len(sharded_checkpoint(tmp_path / "checkpoint-2")) == 2
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    assert model.score.weight.shape[0] == 1
    assert (tmp_path / "final" / "reward_stats.json").exists()


@pytest.mark.parametrize("stage, lora", [("ppo", False), ("grpo", False), ("grpo", True)])
def test_online_stage_runs_sharded(repo_root, tmp_path, stage, lora):
    """PPO shards its policy and its critic (two FSDP2 models); GRPO its policy. The reference
    (a frozen copy) and the reward function stay replicated (docs/scale-out.md); with LoRA the
    reference is the sharded policy with its adapter off."""
    from transformers import AutoModelForCausalLM

    rows = launch(repo_root, stage, tmp_path, ("train.max_steps=2", "train.save_every=2",
                                               "sample_every=2", f"model.lora.enabled={lora}"))
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["kl_mean"] == row["kl_mean"] for row in rows)  # finite, not NaN
    models = 2 if stage == "ppo" else 1
    for index in range(models):
        assert len(sharded_checkpoint(tmp_path / "checkpoint-2", index)) == 2
    assert not (tmp_path / "checkpoint-2" / f"pytorch_model_fsdp_{models}").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "final")


def test_lora_sharded_final_is_base_plus_adapter(repo_root, tmp_path):
    """A LoRA run under FSDP2: final/ (merged, plain from_pretrained) gives the logits of the
    base model with final/adapter/ applied by peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhfkit.models import load_causal_lm, load_tokenizer

    rows = launch(repo_root, "sft", tmp_path, ("train.max_steps=2", "train.eval_every=2",
                                               "train.save_every=2", "model.lora.enabled=true",
                                               "train.learning_rate=0.05"))
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tokenizer = load_tokenizer("tiny-llama")
    base = load_causal_lm("tiny-llama", tokenizer, torch.float32)
    adapted = PeftModel.from_pretrained(base, tmp_path / "final" / "adapter")
    ids = torch.tensor([[1, 42, 7, 99, 5, 3]])
    with torch.no_grad():
        trained = merged(ids).logits
        torch.testing.assert_close(trained, adapted(ids).logits, atol=1e-5, rtol=0)
        with adapted.disable_adapter():
            untrained = adapted(ids).logits
    assert (trained - untrained).abs().max() > 1e-3  # the adapter moved the model


DECODE_SCRIPT = """
import pathlib, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.generate import decode
dist.init_process_group("gloo")
rank = dist.get_rank()
tokenizer = load_tokenizer("tiny-llama")
model = load_causal_lm("tiny-llama", tokenizer, torch.float32).eval()
ids = torch.tensor([[5, 6, 7]]) if rank == 0 else torch.tensor([[8, 9, 10]])
mask, pad = torch.ones_like(ids), tokenizer.pad_token_id
plain = decode(model, ids, mask, 6, 0.0, 0, 1.0, pad, -1)  # greedy, no EOS: 6 tokens
eos = int(plain.ids[0, 3]) if rank == 0 else -1  # rank 0's first token ends its row at once
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
sharded = decode(model, ids, mask, 6, 0.0, 0, 1.0, pad, eos)
assert sharded.ids.shape == (1, 9), sharded.ids.shape  # rank 0 stepped on with rank 1
if rank == 0:
    assert sharded.ids[0, 4:].eq(pad).all(), sharded.ids
else:
    assert torch.equal(sharded.ids, plain.ids), (sharded.ids, plain.ids)
pathlib.Path(sys.argv[1], f"rank{rank}.ok").write_text("ok")  # one file each: stdout lines interleave
dist.barrier()  # neither process tears gloo down while the other still uses it
dist.destroy_process_group()
"""


def test_generation_steps_together_when_sharded(repo_root, tmp_path):
    """Each forward of a sharded model gathers weights from every process: a process whose rows
    all ended (EOS) keeps stepping, writing pad, until every process is done
    (models/generate.py::all_finished); the other process's greedy tokens equal the unsharded
    model's."""
    script = tmp_path / "decode.py"
    script.write_text(DECODE_SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                             "2", str(script), str(tmp_path)], cwd=repo_root, env=env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.ok")) == ["rank0.ok", "rank1.ok"]


def test_the_cli_ends_a_distributed_run_by_destroying_its_process_group(tmp_path, monkeypatch,
                                                                       repo_root):
    """cli.finish_processes: nothing to do without a process group; with one (a one-process
    gloo group here) a barrier, then destroy_process_group — so no process of a launched run
    exits with gloo still up while another uses it. A stage run through ``cli.main`` ends with
    it."""
    import torch.distributed as dist

    from rlhfkit import cli

    cli.finish_processes()
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    cli.finish_processes()
    assert not dist.is_initialized()

    calls = []
    monkeypatch.setattr(cli, "finish_processes", lambda: calls.append("finished"))
    monkeypatch.chdir(repo_root)
    assert cli.main(["sft", "--config", "examples/sft_tiny.yaml", f"output_dir={tmp_path / 'sft'}",
                     "train.max_steps=1", "train.save_every=0", "train.eval_every=0"]) == 0
    assert calls == ["finished"]

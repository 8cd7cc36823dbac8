"""Two data-parallel processes (torchrun, gloo on CPU) give the loss curve of one process."""
import os
import subprocess
import sys

import pytest

from rlhfkit.trainers import common


def launch(repo_root, out, nproc):
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    cmd = prefix + ["-m", "rlhfkit", "sft", "--config", "examples/sft_tiny.yaml",
                    f"output_dir={out}", "train.max_steps=5", "train.eval_every=5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [row for row in common.read_metrics(out) if row["step"] > 0]


def test_two_processes_equal_one(repo_root, tmp_path):
    one = launch(repo_root, tmp_path / "one", 1)
    two = launch(repo_root, tmp_path / "two", 2)
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]  # the global token count, not a per-process one
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    assert one[-1]["eval_loss"] == pytest.approx(two[-1]["eval_loss"], abs=1e-5)

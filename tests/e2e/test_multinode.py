"""Two "nodes" × one process on loopback, joined by torchrun's c10d rendezvous, train to the
losses of one process with the same global batch (docs/scale-out.md: the launch lines).

Each node is its own ``torchrun --nnodes 2 --node-rank i --nproc-per-node 1 --rdzv-backend
c10d --rdzv-endpoint 127.0.0.1:PORT`` subprocess, as on two machines; the processes then talk
gloo over TCP. Tolerance 1e-5 on the losses, as for two processes on one node
(tests/trainers/test_distributed.py): only the order of float reductions differs.
"""
import os
import socket
import subprocess
import sys

import pytest

from rlhfkit.trainers import common

OVERRIDES = ("train.max_steps=3", "train.eval_every=3", "train.save_every=0")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stage_args(out) -> list[str]:
    return ["-m", "rlhfkit", "sft", "--config", "examples/sft_tiny.yaml", f"output_dir={out}",
            *OVERRIDES]


def test_two_nodes_equal_one_process(repo_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *stage_args(tmp_path / "one")], cwd=repo_root,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
         "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
         f"127.0.0.1:{port}", "--rdzv-id", "rlhfkit-test", "--local-addr", "127.0.0.1",
         # node 0 hosts the rendezvous store, as the first machine of a job would
         "--rdzv-conf", f"is_host={'true' if rank == 0 else 'false'},join_timeout=60",
         *stage_args(tmp_path / "two")],
        cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    single = [row for row in common.read_metrics(tmp_path / "one") if row["step"] > 0]
    multi = [row for row in common.read_metrics(tmp_path / "two") if row["step"] > 0]
    assert [row["step"] for row in multi] == [1, 2, 3]
    for a, b in zip(single, multi):
        assert b["tokens"] == a["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert multi[-1]["eval_loss"] == pytest.approx(single[-1]["eval_loss"], abs=1e-5)

"""Every device-dependent test runs once per device (tests/conftest.py::device): checked by
collecting the suite with RLHFKIT_TEST_DEVICES=cpu,cuda, as a machine with a GPU would.
Collection only: nothing runs on CUDA here, so the check holds on a CPU-only machine too.

- every ``[..cuda..]`` test has its ``[..cpu..]`` twin and the other way round;
- ``-k cuda`` (scripts/gpu_check.sh) selects exactly the CUDA twins;
- the runs that matter most (each stage's tiny run and resume, decoding against HF, packing,
  sampling) are among them;
- without the variable, CUDA runs exist only where CUDA does.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEVICE_DIRS = ("tests/ops", "tests/models", "tests/trainers", "tests/online")
MUST_RUN_ON_CUDA = (
    "tests/trainers/test_sft.py::test_full_run_writes_artefacts_and_loss_falls",
    "tests/trainers/test_sft.py::test_resume_equals_uninterrupted",
    "tests/trainers/test_reward.py::test_trained_tiny_rm_separates_toy_set",
    "tests/trainers/test_reward.py::test_resume_equals_uninterrupted",
    "tests/trainers/test_dpo_trainer.py::test_tiny_example_loss_falls_and_artefacts_load",
    "tests/trainers/test_dpo_trainer.py::test_resume_equals_uninterrupted",
    "tests/online/test_ppo.py::test_tiny_example_score_rises_and_writes_artefacts",
    "tests/online/test_ppo.py::test_resume_equals_uninterrupted",
    "tests/online/test_grpo.py::test_tiny_example_score_rises_and_writes_artefacts",
    "tests/online/test_grpo.py::test_resume_equals_uninterrupted",
    "tests/models/test_generate.py::test_greedy_equals_hf_generate_with_left_padding",
    "tests/models/test_packing.py::test_logprobs_and_gradients_equal_one_row_per_response",
    "tests/ops/test_sampling.py::test_sampled_frequencies_match_the_distribution",
)


def collected(*args: str, devices: str | None = "cpu,cuda", paths=DEVICE_DIRS) -> list[str]:
    """Test ids ``pytest --collect-only`` finds under ``paths``."""
    env = dict(os.environ)
    env.pop("RLHFKIT_TEST_DEVICES", None)
    if devices is not None:
        env["RLHFKIT_TEST_DEVICES"] = devices
    out = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "--collect-only",
                          "-q", "-p", "no:cacheprovider", *args, *paths],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if "::" in line]


def device_of(test_id: str) -> str | None:
    """'cpu' or 'cuda' when the id carries a device parameter (``name[sdpa-cuda]``)."""
    params = test_id.partition("[")[2].rstrip("]").split("-")
    return next((p for p in params if p in ("cpu", "cuda")), None)


def twin(test_id: str, device: str) -> str:
    name, _, params = test_id.partition("[")
    other = [device if p in ("cpu", "cuda") else p for p in params.rstrip("]").split("-")]
    return f"{name}[{'-'.join(other)}]"


def test_device_tests_have_cuda_twins_and_k_cuda_selects_them():
    ids = collected()
    cpu = {i for i in ids if device_of(i) == "cpu"}
    cuda = {i for i in ids if device_of(i) == "cuda"}
    assert cuda and {twin(i, "cpu") for i in cuda} == cpu
    assert set(collected("-k", "cuda")) == cuda  # what scripts/gpu_check.sh runs
    for folder in DEVICE_DIRS:
        assert any(i.startswith(folder + "/") for i in cuda), folder
    missing = [name for name in MUST_RUN_ON_CUDA if not any(i.startswith(name + "[") for i in cuda)]
    assert missing == []


def test_cuda_runs_exist_only_where_cuda_does():
    ids = collected(devices=None, paths=("tests/ops/test_sampling.py",))
    assert any(device_of(i) == "cpu" for i in ids)
    assert any(device_of(i) == "cuda" for i in ids) == torch.cuda.is_available()

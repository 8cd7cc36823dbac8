"""The allocator: the entry point's re-exec environment, and ``keep_freed_memory`` — glibc's
thresholds raised in-process (notebooks, scripts, the tests), which every stage's start_run
applies."""
import subprocess
import sys

import pytest

from rlhfkit import allocator
from rlhfkit.config import load_config
from rlhfkit.trainers import common, sft

# The draw of one token for 32 rows over SmolLM2's 49,152-token vocabulary (ops/sampling.py:
# 6 MiB of weights, a 12 MiB float64 cumulative sum), ten times; the minor page faults counted.
# Under glibc's defaults the freed blocks go back to the kernel and fault in again each time.
FAULTS = """
import resource, sys, torch
from rlhfkit.allocator import keep_freed_memory
from rlhfkit.ops.sampling import inverse_cdf_sample
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
scores, uniform = torch.randn(32, 49152), torch.rand(32)
inverse_cdf_sample(scores, uniform)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    inverse_cdf_sample(scores, uniform)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    env = {"PATH": "/usr/bin:/bin", "RLHFKIT_ALLOCATOR": "auto"}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_keep_freed_memory_stops_the_page_faults_of_reallocated_blocks():
    """Measured (Intel Xeon, glibc 2.36): 18,427 faults under the defaults, 1,536 kept."""
    applied, kept = faults("keep")
    default_applied, default = faults("default")
    assert applied == "True" and default_applied == "False"
    assert default > (12 << 20) // 4096, default  # at least the cumulative sum's pages, again
    assert kept * 4 < default, (kept, default)


def test_keep_freed_memory_respects_the_opt_out_and_the_entry_point():
    assert allocator.keep_freed_memory({"RLHFKIT_ALLOCATOR": "system"}) is False
    assert allocator.keep_freed_memory({allocator.MARKER: "1"}) is False


def test_every_stage_run_applies_it(repo_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = load_config(sft.SFTConfig, str(repo_root / "examples/sft_tiny.yaml"),
                      [f"output_dir={tmp_path}"])
    common.start_run(cfg)
    assert calls == [1]

"""End to end: ``rlhfkit demo --quick`` through the installed CLI (tiny models, ~1–2 minutes)."""
import json
import os
import subprocess
import sys


def test_demo_quick_writes_report_and_the_score_rises(repo_root, tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, RLHFKIT_CACHE=str(tmp_path / "cache"))  # train the tiny RM afresh
    result = subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "--quick",
                             f"output_dir={out}"], cwd=repo_root, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "positive_share" in result.stdout and "report:" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    assert after["score_mean"] > before["score_mean"]  # held-out prompts, same sampling seed
    # The tiny policy exploits the tiny RM (KL of several nats); the real demo is bench/demo.py.
    assert 0.0 < after["kl_mean"] < float("inf")
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "Inside a rollout" in page
    assert "<b>fidelity</b>" in page  # the fourth token row: sampler vs trainer log-probs
    assert (out / "grpo" / "final" / "config.json").exists()  # the default stage 3: GRPO
    assert not (out / "sft").exists() and "stage 1" not in result.stdout  # English: no SFT

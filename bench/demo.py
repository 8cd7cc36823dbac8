"""Time the main job and check its targets: ``python bench/demo.py [--fresh] [key=value ...]``.

Runs ``rlhfkit demo`` (the full pipeline on the embedded model), then prints the wall time,
the before/after numbers and whether each target of issue 15 is met (positive share ≥ 90% on
≥ 64 held-out prompts, mean KL ≤ 4 nats, distinct-2 ≥ 0.8, a first run ≤ 10 min), and renders
report.html in headless Chromium to a PNG (Debian package ``chromium``) to check that it opens
in a browser. ``--fresh`` makes it a first run: an empty model cache (``RLHFKIT_CACHE`` in a
temporary folder), so the embedded model is de-quantised and the reward model trained.
"""
from __future__ import annotations

import argparse
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def screenshot(report: Path, png: Path) -> bool:
    """Render the report with headless Chromium; True when a non-empty PNG was written."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not installed (apt-get install chromium): no screenshot")
        return False
    profile = png.parent / "chromium-profile"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    "--window-size=1200,2400", f"--screenshot={png}", report.resolve().as_uri()],
                   capture_output=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    return png.exists() and png.stat().st_size > 10_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true",
                        help="a first run: an empty model cache (de-quantise the model, train "
                             "the reward model)")
    parser.add_argument("--output-dir", default="runs/bench_demo")
    parser.add_argument("overrides", nargs="*", help="rlhfkit demo key=value overrides")
    args = parser.parse_args()
    out = Path(args.output_dir)
    command = ["rlhfkit", "demo", f"output_dir={out}", *args.overrides]
    env = dict(os.environ)
    cache = tempfile.TemporaryDirectory(prefix="rlhfkit-demo-cache-") if args.fresh else None
    if cache is not None:
        env["RLHFKIT_CACHE"] = cache.name
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    minutes = (time.perf_counter() - start) / 60
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    trained_rm = summary["seconds_reward_model"] > 60
    checks = {
        "positive share >= 0.90": after["positive_share"] >= 0.90,
        "mean KL <= 4 nats": after["kl_mean"] <= 4.0,
        "distinct-2 >= 0.8": after["distinct_2"] >= 0.8,
        "wall time <= 10 min": minutes <= 10,
        "report renders in Chromium": screenshot(out / "report.html", out / "report.png"),
    }
    print(f"\nwall time {minutes:.1f} min (reward model "
          f"{'trained' if trained_rm else 'reused'}: {summary['seconds_reward_model']:.0f} s)")
    for key in before:
        print(f"{key:<16} {before[key]:>8.3f} -> {after[key]:>8.3f}")
    for name, ok in checks.items():
        print(f"[{'x' if ok else ' '}] {name}")
    if cache is not None:
        cache.cleanup()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

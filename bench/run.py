"""rlhfkit vs TRL, side by side on the same machine in one run (issue 7).

    python bench/run.py                       # every workload, 1 warm-up + 3 timed steps a side
    python bench/run.py --workloads sft,dpo_copy --repeats 5
    python bench/run.py --scale 0.125 --repeats 1 --threads 1   # smoke test: short sequences

Each side runs in its own process (so peak RSS is its own) and the driver alternates them
step by step: after one warm-up step each, round r sends "go" to every side in turn, the order
rotated each round, so a change in machine load hits all sides alike. Sides:
  rlhfkit    the main interpreter, with the allocator settings the ``rlhfkit`` entry point
             applies (tcmalloc preloaded if libtcmalloc-minimal4 is installed, else the glibc
             tunables; RLHFKIT_ALLOCATOR=system turns that off, as for the CLI)
  trl        bench/.venv-trl (bench/setup_trl.sh), plain python as installed
  trl+alloc  the same, with rlhfkit's allocator settings in its environment
Prints a markdown table and writes bench/results/<time>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402

VENVS = {"trl": BENCH / ".venv-trl", "trl112": BENCH / ".venv-trl112"}


@dataclass(frozen=True)
class Workload:
    name: str
    script: str
    variant: str
    flops: str          # key of FLOPS: how many model FLOPs one token costs
    rows: int           # sequences per step
    length: int         # tokens per sequence counted (or new tokens per row for generation)
    venv: str = "trl"
    target_vs_alloc: float = 1.1  # issue 7: speed-up wanted against TRL with the same allocator
    note: str = ""


WORKLOADS = [
    Workload("generate", "generate.py", "", "forward", 16, 64, target_vs_alloc=2.5,
             note="new tokens; the target is vs HF generate"),
    Workload("sft", "sft.py", "", "train", 8, 128),
    Workload("rm", "rm.py", "", "train_no_head", 16, 128),
    Workload("dpo_copy", "dpo.py", "copy", "train_plus_ref", 16, 128, target_vs_alloc=1.3),
    Workload("dpo_precomputed", "dpo.py", "precomputed", "train", 16, 128, target_vs_alloc=1.3),
    Workload("dpo_lora", "dpo.py", "lora", "lora_plus_ref", 16, 128, target_vs_alloc=1.3),
    Workload("ppo", "ppo.py", "", "ppo", 8, 128, venv="trl112", target_vs_alloc=1.3,
             note="one iteration: generate, score, 4 PPO epochs; tokens = prompt + response"),
    Workload("grpo", "grpo.py", "", "grpo", 32, 128, target_vs_alloc=1.3,
             note="one step: 8 prompts × 4 generations, reference forward, one update"),
]
NOT_MEASURABLE: dict = {}


def model_flops(kind: str, tokens: int, counts: dict) -> float:
    """Model FLOPs of one step: the standard count of the work the math needs, the same for
    both sides whatever each actually computes (so MFU ratios equal speed ratios). 6·N per
    trained token, 2·N per forward-only token; N counts the tied embedding once, as the
    lm-head; a reward model / critic has no lm-head (N_body, the embedding is a lookup)."""
    n, body = counts["n_total"], counts["n_body"]
    per_token = {
        "train": 6 * n,
        "train_no_head": 6 * body,
        "train_plus_ref": 6 * n + 2 * n,   # policy forward + backward, reference forward
        "lora_plus_ref": 4 * n + 2 * n,    # policy without weight gradients, reference forward
        "forward": 2 * n,
        # PPO per prompt+response token: rollout 2·N (prefill + decode), reference 2·N,
        # critic and reward-model forwards 2·N_body each, 4 epochs × (actor 6·N + critic
        # 6·N_body). The old log-probs can come from the sampling logits: not counted.
        "ppo": 4 * n + 4 * body + 4 * 6 * (n + body),
        # GRPO per prompt+response token: rollout 2·N, reference 2·N, one update 6·N (the old
        # log-probs are the update's own: μ = 1).
        "grpo": 2 * n + 2 * n + 6 * n,
    }[kind]
    return per_token * tokens


# ----------------------------------------------------------------------------- sides
def base_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", "RLHFKIT_ALLOCATOR_APPLIED")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def with_allocator(env: dict) -> dict:
    """The environment the ``rlhfkit`` entry point re-execs itself with."""
    from rlhfkit.allocator import allocator_env

    return allocator_env(env) or env


def side_command(side: str, workload: Workload, args) -> tuple[list[str], dict]:
    env = base_env(args.threads)
    if side == "rlhfkit":
        python = sys.executable
        env["RLHFKIT_BENCH_SET"] = args.rlhfkit_set
        if os.environ.get("RLHFKIT_ALLOCATOR", "auto") != "system":
            env = with_allocator(env)
    else:
        python = str(VENVS[workload.venv] / "bin" / "python")
        if side == "trl+alloc":
            env = with_allocator(env)
    workdir = Path(args.workdir) / f"{workload.name}-{side}"
    command = [python, str(BENCH / workload.script), "--side", side.split("+")[0],
               "--steps", str(args.warmup + args.repeats), "--threads", str(args.threads),
               "--scale", str(args.scale), "--workdir", str(workdir)]
    if workload.variant:
        command += ["--variant", workload.variant]
    return command, env


@dataclass
class Worker:
    side: str
    proc: subprocess.Popen
    log: Path
    ready: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    final: dict = field(default_factory=dict)

    def message(self) -> dict:
        """Next protocol line; library output goes to the log."""
        with self.log.open("a") as log:
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    self.proc.wait()
                    tail = self.log.read_text()[-3000:]
                    raise RuntimeError(
                        f"{self.side} worker exited ({self.proc.returncode}):\n{tail}")
                if line.startswith(harness.PREFIX):
                    return json.loads(line[len(harness.PREFIX):])
                log.write(line)

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self.message()
        self.steps.append(out)
        return out


def start(side: str, workload: Workload, args, log_dir: Path) -> Worker:
    command, env = side_command(side, workload, args)
    log = log_dir / f"{workload.name}-{side}.log"
    log.write_text(" ".join(command) + "\n")
    stderr = log.open("a")
    proc = subprocess.Popen(command, env=env, cwd=BENCH, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
    return Worker(side, proc, log)


def run_workload(workload: Workload, args, log_dir: Path) -> dict:
    sides = [s for s in args.sides if not (s != "rlhfkit" and not (VENVS[workload.venv] / "bin"
                                                                   / "python").exists())]
    sequential = args.sequential or workload.name in args.sequential_for.split(",")
    groups = [[s] for s in sides] if sequential else [sides]
    workers = []
    for group in groups:
        started = [start(side, workload, args, log_dir) for side in group]
        try:
            for worker in started:
                worker.ready = worker.message()
            for round_ in range(args.warmup + args.repeats):
                shift = round_ % len(started)
                for worker in started[shift:] + started[:shift]:
                    step = worker.go()
                    print(f"  {workload.name:16s} {worker.side:9s} step {step['step']}: "
                          f"{step['seconds']:.2f} s", flush=True)
            for worker in started:
                worker.final = worker.message()
                worker.proc.wait()
        finally:  # a side that failed leaves the others waiting for a go: end them
            for worker in started:
                if worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
        workers += started
    return summarise(workload, workers, args)


def summarise(workload: Workload, workers: list[Worker], args) -> dict:
    counts = harness.param_counts()
    out = {"workload": workload.name, "variant": workload.variant, "note": workload.note,
           "sides": {}}
    for w in workers:
        timed = w.steps[args.warmup:]
        seconds = [s["seconds"] for s in timed]
        median = statistics.median(seconds)
        if workload.flops == "forward":
            tokens = statistics.median(s.get("new_tokens", workload.rows * workload.length)
                                       for s in timed)
        else:
            tokens = workload.rows * harness.scaled(workload.length // 2, args.scale) * 2
        flops = model_flops(workload.flops, int(tokens), counts)
        out["sides"][w.side] = {
            "median_s": median, "min_s": min(seconds), "all_s": seconds,
            "warmup_s": [s["seconds"] for s in w.steps[:args.warmup]],
            "tokens_per_step": tokens, "tokens_per_s": tokens / median,
            "model_gflops_per_s": flops / median / 1e9, "peak_rss_mb": w.final["peak_rss_mb"],
            "losses": [s.get("loss") for s in w.steps], "ready": w.ready,
            "phases": [s.get("phases") for s in timed if s.get("phases")],
            # BENCH_RSS_EVERY set: each step's peak VmRSS, and per phase (harness.RssSampler)
            "step_peak_rss_mb": [s.get("step_peak_rss_mb") for s in w.steps],
            "phase_peak_rss_mb": [s.get("phase_peak_rss_mb") for s in w.steps]}
    return out


# ----------------------------------------------------------------------------- machine
def load_snapshot() -> dict:
    """Load average and the busiest processes that are not this run's."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,rss,args", "--sort=-pcpu"],
                        capture_output=True, text=True).stdout.splitlines()[1:9]
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "top": [line[:160] for line in ps]}


def ceiling(threads: int, repeats: int = 10) -> dict:
    out = subprocess.run([sys.executable, str(BENCH / "matmul.py"), "--threads", str(threads),
                          "--repeats", str(repeats)],
                         capture_output=True, text=True, check=True, env=base_env(threads))
    return json.loads(out.stdout.splitlines()[0])


# ----------------------------------------------------------------------------- table
def table(results: list[dict], peak: float, sides: list[str]) -> str:
    def cell(side_result, key, fmt):
        return fmt.format(side_result[key]) if side_result else "–"

    head = ["workload"] + [f"{s} s/step" for s in sides] + [f"{s} tok/s" for s in sides] \
        + [f"{s} peak RSS GB" for s in sides] + [f"{s} MFU" for s in sides] \
        + ["speed-up vs trl", "vs trl+alloc", "RSS rlhfkit/trl", "targets met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['workload']} | not measured: {r['skipped']} |"
                         + " |" * (len(head) - 2))
            continue
        s = r["sides"]
        row = [r["workload"]]
        row += [cell(s.get(x), "median_s", "{:.2f}") for x in sides]
        row += [cell(s.get(x), "tokens_per_s", "{:.0f}") for x in sides]
        row += [f"{s[x]['peak_rss_mb'] / 1024:.1f}" if x in s else "–" for x in sides]
        row += [f"{100 * s[x]['model_gflops_per_s'] / peak:.0f}%" if x in s else "–"
                for x in sides]
        ours = s.get("rlhfkit")
        for other in ("trl", "trl+alloc"):
            row.append(f"{s[other]['median_s'] / ours['median_s']:.2f}×"
                       if ours and other in s else "–")
        row.append(f"{ours['peak_rss_mb'] / s['trl']['peak_rss_mb']:.2f}"
                   if ours and "trl" in s else "–")
        row.append(verdict(r, peak))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + phase_lines(results)


def verdict(result: dict, peak: float) -> str:
    """Issue 7's targets: ≥ 1.5× TRL as installed, ≥ target_vs_alloc × TRL with the same
    allocator, peak RSS ≤ ½ TRL's, training steps ≥ 80% MFU. ✗ names what is missed."""
    s, workload = result["sides"], {w.name: w for w in WORKLOADS}[result["workload"]]
    ours = s.get("rlhfkit")
    if not ours or "trl" not in s:
        return "–"
    missed = []
    if s["trl"]["median_s"] / ours["median_s"] < 1.5:
        missed.append("1.5× trl")
    if "trl+alloc" in s and s["trl+alloc"]["median_s"] / ours["median_s"] < \
            workload.target_vs_alloc:
        missed.append(f"{workload.target_vs_alloc}× trl+alloc")
    if ours["peak_rss_mb"] > 0.5 * s["trl"]["peak_rss_mb"]:
        missed.append("½ RSS")
    if workload.flops != "forward" and ours["model_gflops_per_s"] < 0.8 * peak:
        missed.append("80% MFU")
    return "✓" if not missed else "✗ " + ", ".join(missed)


def phase_lines(results: list[dict]) -> str:
    """Median seconds per phase (PPO: generate / score / update) where a side reports them."""
    out = []
    for r in results:
        for side, v in r.get("sides", {}).items():
            if v.get("phases"):
                keys = v["phases"][0].keys()
                parts = ", ".join(f"{k} {statistics.median(p[k] for p in v['phases']):.1f} s"
                                  for k in keys)
                out.append(f"- {r['workload']} {side}: {parts}")
    return ("\n\nPhases (median):\n" + "\n".join(out)) if out else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS))
    parser.add_argument("--sides", default="rlhfkit,trl,trl+alloc")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per side")
    parser.add_argument("--repeats-for", default="",
                        help="per-workload timed steps, e.g. ppo=2,dpo_copy=4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="sequence-length scale (smoke)")
    parser.add_argument("--sequential", action="store_true",
                        help="one side at a time (less memory; no step-by-step alternation)")
    parser.add_argument("--sequential-for", default="dpo_copy,dpo_precomputed,dpo_lora,ppo,grpo",
                        help="workloads run one side at a time: three sides of these at once "
                             "need 20-30 GB (TRL alone: 7-13 GB), more than a 24 GB machine has")
    parser.add_argument("--rlhfkit-set", default="",
                        help="extra rlhfkit overrides, comma-separated, e.g. "
                             "train.micro_batch_size=2 (recorded in the results)")
    parser.add_argument("--workdir", default="/tmp/rlhfkit-bench")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args()
    args.sides = args.sides.split(",")
    # SIGTERM unwinds like Ctrl-C, so run_workload's finally ends the worker processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out)
    log_dir = out_dir / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    by_name = {w.name: w for w in WORKLOADS}
    repeats_for = {k: int(v) for k, v in (item.split("=") for item in args.repeats_for.split(",")
                                          if item)}
    record = {"started": load_snapshot(), "args": vars(args),
              "matmul": ceiling(args.threads, 3 if args.scale < 1 else 10)}
    peak = record["matmul"]["fp32_gflops"]
    print(f"fp32 matmul peak {peak:.0f} GFLOP/s, bf16 {record['matmul']['bf16_gflops']:.0f}; "
          f"load {record['started']['loadavg']}", flush=True)
    results = []

    def save() -> str:  # after every workload, so an interrupted run keeps what it measured
        record.update(finished=load_snapshot(), results=results)
        record["versions"] = {r["workload"]: {s: v["ready"].get("versions") for s, v in
                                              r.get("sides", {}).items()} for r in results}
        markdown = table(results, peak, args.sides)
        (out_dir / f"{stamp}.json").write_text(json.dumps(record, indent=1) + "\n")
        (out_dir / f"{stamp}.md").write_text(markdown + "\n")
        return markdown

    for name in args.workloads.split(","):
        if name in NOT_MEASURABLE:
            results.append({"workload": name, "skipped": NOT_MEASURABLE[name]})
            continue
        workload = by_name[name]
        if not (BENCH / workload.script).exists():
            results.append({"workload": name, "skipped": f"bench/{workload.script} missing"})
            continue
        clock = time.perf_counter()
        try:
            own = argparse.Namespace(**{**vars(args),
                                        "repeats": repeats_for.get(name, args.repeats)})
            results.append(run_workload(workload, own, log_dir))
        except RuntimeError as err:  # a side that cannot run yet (a stage still being written)
            print(f"  {name}: failed: {str(err)[-600:]}", flush=True)
            results.append({"workload": name, "skipped": str(err).splitlines()[0]})
        results[-1]["wall_s"] = time.perf_counter() - clock
        save()
    markdown = save()
    print()
    print(markdown)
    print(f"\nresults: {out_dir / stamp}.json; load before {record['started']['loadavg']}, "
          f"after {record['finished']['loadavg']}")


if __name__ == "__main__":
    main()

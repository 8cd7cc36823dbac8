"""What every workload script shares: fixed inputs, the worker protocol, FLOP counts, versions.

Imports only torch and the standard library, so it loads in the main interpreter (rlhfkit side)
and in bench/.venv-trl (TRL side) alike.

Worker protocol (one process per side, so peak RSS is that side's alone):
  worker → stdout  ``@@BENCH {"ready": ...}`` once the model and trainer are built
  driver → stdin   ``go``            run one step (the first ``warmup`` are not reported as timed)
  worker → stdout  ``@@BENCH {"step": i, "seconds": s, ...}``
  worker → stdout  ``@@BENCH {"final": ..., "peak_rss_mb": ...}`` after the last step, then exits
Everything else a library prints goes to the worker's log. The driver (bench/run.py) keeps the
sides alive together and sends ``go`` round-robin, so A and B alternate step by step.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

import torch

PREFIX = "@@BENCH "
MODEL_DIR = Path(os.environ.get("RLHFKIT_CACHE", Path.home() / ".cache" / "rlhfkit")) \
    / "smollm2-135m-instruct"
FIRST_ORDINARY_ID = 100  # SmolLM2's special tokens are ids < 17: random ids never hit them
SEED = 1234


# ----------------------------------------------------------------------------- inputs
def random_ids(n_rows: int, length: int, seed: int, vocab_size: int = 49152) -> list[list[int]]:
    """Seeded random token ids (n_rows, length) as lists: identical on both sides."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_ORDINARY_ID, vocab_size, (n_rows, length), generator=gen)
    return ids.tolist()


def pairs(n_pairs: int, prompt_len: int, response_len: int, seed: int = SEED) -> list[dict]:
    """Preference pairs of fixed lengths: {"prompt", "chosen", "rejected"} token-id lists."""
    prompts = random_ids(n_pairs, prompt_len, seed)
    chosen = random_ids(n_pairs, response_len, seed + 1)
    rejected = random_ids(n_pairs, response_len, seed + 2)
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected)]


def sft_rows(n_rows: int, prompt_len: int, response_len: int, seed: int = SEED) -> list[dict]:
    """SFT rows of fixed lengths: {"prompt", "response"} token-id lists."""
    prompts = random_ids(n_rows, prompt_len, seed)
    responses = random_ids(n_rows, response_len, seed + 1)
    return [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]


# ----------------------------------------------------------------------------- FLOPs
def param_counts(config_path: Path = MODEL_DIR / "config.json") -> dict:
    """N (all weights, the tied embedding counted once, as the lm-head) and N without it.

    Counted from the config so both sides and the table agree without loading a model.
    """
    c = json.loads(config_path.read_text())
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim", h // heads)
    attn = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * h * inter
    norms = 2 * h
    body = layers * (attn + mlp + norms) + h  # + final norm
    embed = c["vocab_size"] * h
    return {"n_total": body + embed, "n_body": body, "n_embed": embed}


# ----------------------------------------------------------------------------- process facts
def peak_rss_mb() -> float:
    """VmHWM of this process (the peak resident set since it started), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocator_in_use() -> str:
    """'tcmalloc' when it is mapped into this process, 'glibc+tunables' or 'glibc'."""
    maps = Path("/proc/self/maps").read_text()
    if "tcmalloc" in maps:
        return "tcmalloc"
    return "glibc+tunables" if "malloc" in os.environ.get("GLIBC_TUNABLES", "") else "glibc"


def versions(*names: str) -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "accelerate", "peft", *names):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)


# ----------------------------------------------------------------------------- protocol
def emit(payload: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def wait_for_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"bench worker: expected 'go', got {line!r}")


def rss_mb() -> float:
    """VmRSS of this process now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ready(side: str, extra_versions: tuple = (), **facts) -> None:
    """Also the memory profile's first two points: resident now (models, optimiser built, no
    step yet) and the peak so far (loading included), beside the final peak of the steps."""
    emit({"ready": True, "side": side, "pid": os.getpid(), "versions": versions(*extra_versions),
          "allocator": allocator_in_use(), "threads": torch.get_num_threads(),
          "ready_rss_mb": rss_mb(), "ready_peak_rss_mb": peak_rss_mb(), **facts})


class RssSampler:
    """VmRSS every ``every`` seconds on a thread while a step runs: [(seconds, MB)]. Opt-in
    (BENCH_RSS_EVERY=0.02): a memory profile of the step, on either side."""

    def __init__(self, every: float):
        import threading

        self.every, self.samples = every, []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._start = time.perf_counter()
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.perf_counter() - self._start, rss_mb()))
            self._done.wait(self.every)

    def stop(self) -> list:
        self._done.set()
        self._thread.join()
        return self.samples


def phase_peaks(samples: list, phases: dict) -> dict:
    """Peak MB of ``samples`` [(seconds, MB)] within each phase, the phases taken as back to
    back from the step's start in the order given (the stage Timer's order); "rest" after."""
    out, begin = {}, 0.0
    for name, seconds in [*phases.items(), ("rest", float("inf"))]:
        inside = [mb for t, mb in samples if begin <= t < begin + seconds]
        if inside:
            out[name] = round(max(inside))
        begin += seconds
    return out


class StepClock:
    """Times steps between ``start`` (after the driver's go) and ``stop``; reports each.

    With BENCH_RSS_EVERY=<seconds>, each step reports its peak VmRSS (``step_peak_rss_mb``)
    and, where it reports phases, the peak within each (``phase_peak_rss_mb``).
    With BENCH_PROFILE=<file> in the environment, step BENCH_PROFILE_STEP (default 1, after
    the warm-up) runs under torch.profiler and its op table (self CPU time, memory) is written
    to <file>: the same code path as the timed steps, on either side.
    """

    def __init__(self):
        self.index = 0
        self._start = None
        self._profile_path = os.environ.get("BENCH_PROFILE")
        self._profile_step = int(os.environ.get("BENCH_PROFILE_STEP", "1"))
        self._profiler = None
        self._rss_every = float(os.environ.get("BENCH_RSS_EVERY", "0"))
        self._sampler = None

    def start(self) -> None:
        wait_for_go()
        if self._rss_every > 0:
            self._sampler = RssSampler(self._rss_every)
        if self._profile_path and self.index == self._profile_step:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                     record_shapes=True)
            self._profiler.__enter__()
        self._start = time.perf_counter()

    def stop(self, **facts) -> None:
        seconds = time.perf_counter() - self._start
        if self._sampler is not None:
            samples = self._sampler.stop()
            facts["step_peak_rss_mb"] = round(max(mb for _, mb in samples))
            if facts.get("phases"):
                facts["phase_peak_rss_mb"] = phase_peaks(samples, facts["phases"])
            self._sampler = None
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            averages = self._profiler.key_averages()
            Path(self._profile_path).write_text(
                f"step {self.index}: {seconds:.2f} s\n"
                + averages.table(sort_by="self_cpu_time_total", row_limit=30) + "\n"
                + averages.table(sort_by="self_cpu_memory_usage", row_limit=15) + "\n"
                + self._profiler.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=25))
            self._profiler = None
        emit({"step": self.index, "seconds": seconds, **facts})
        self.index += 1


def serve(step, n_steps: int) -> None:
    """Run ``step()`` n_steps times, each on the driver's go; it may return a dict of facts."""
    clock = StepClock()
    for _ in range(n_steps):
        clock.start()
        facts = step() or {}
        clock.stop(**facts)


def finish(**facts) -> None:
    emit({"final": True, "peak_rss_mb": peak_rss_mb(), **facts})


def main(sides: dict) -> None:
    """A workload script's entry: parse the driver's arguments, pin threads, run one side."""
    arguments = worker_args()
    setup(arguments.threads)
    sides[arguments.side](arguments)


def worker_args(argv=None):
    """The arguments every workload script takes (the driver passes them)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--side", required=True, choices=("rlhfkit", "trl"))
    parser.add_argument("--variant", default="", help="workload variant (e.g. dpo reference mode)")
    parser.add_argument("--steps", type=int, default=4, help="steps in all, warm-up included")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink lengths for smoke tests (0.25 = quarter-length sequences)")
    parser.add_argument("--workdir", default="/tmp/rlhfkit-bench")
    return parser.parse_args(argv)


def scaled(n: int, scale: float) -> int:
    return max(2, int(round(n * scale)))

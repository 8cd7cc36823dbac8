"""The machine's ceiling: GFLOP/s of a 2048³ torch matmul in fp32 and bf16 (issue 7).

MFU in bench/run.py is model FLOPs / s divided by the fp32 figure measured here.
Usage: python bench/matmul.py [--threads 2] [--size 2048] [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Median GFLOP/s of ``a @ b`` for (size, size) matrices; 2·size³ FLOPs each."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    a @ b  # warm-up: thread pool, packed-weight caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def cpu() -> dict:
    """CPU model and the vector extensions that decide the bf16 path (avx512_bf16, AMX)."""
    model, flags = "", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": model, "flags": [f for f in wanted if f in flags]}


def measure(threads: int = 2, size: int = 2048, repeats: int = 10) -> dict:
    """fp32 with ``repeats`` timings; bf16 with a third as many (without avx512_bf16 or AMX it
    is emulated and slow: the figure then says bf16 does not pay on this CPU)."""
    torch.set_num_threads(threads)
    return {"threads": threads, "size": size, "torch": torch.__version__, **cpu(),
            "fp32_gflops": gflops(torch.float32, size, repeats),
            **bf16(size, max(1, repeats // 3))}


def bf16(size: int, repeats: int) -> dict:
    """bf16 GFLOP/s; measured at 512³ alone when that already shows an emulated path
    (< 10 GFLOP/s: one 2048³ product would then take minutes)."""
    small = gflops(torch.bfloat16, 512, 1)
    if small < 10:
        return {"bf16_gflops": small, "bf16_size": 512}
    return {"bf16_gflops": gflops(torch.bfloat16, size, repeats), "bf16_size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    result = measure(args.threads, args.size, args.repeats)
    print(json.dumps(result))
    print(f"matmul {args.size}³, {args.threads} threads: "
          f"fp32 {result['fp32_gflops']:.0f} GFLOP/s, "
          f"bf16 {result['bf16_gflops']:.1f} GFLOP/s ({result['bf16_size']}³); "
          f"CPU {result['cpu']} {' '.join(result['flags'])}")


if __name__ == "__main__":
    main()

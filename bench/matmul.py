"""The machine's ceiling: GFLOP/s of a 2048³ torch matmul in fp32 and bf16 (issue 7).

MFU in bench/run.py is model FLOPs / s divided by the fp32 figure measured here.
Usage: python bench/matmul.py [--threads 2] [--size 2048] [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Median GFLOP/s of ``a @ b`` for (size, size) matrices; 2·size³ FLOPs each."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    for _ in range(2):  # warm-up: thread pool, packed-weight caches
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def measure(threads: int = 2, size: int = 2048, repeats: int = 10) -> dict:
    torch.set_num_threads(threads)
    return {"threads": threads, "size": size, "torch": torch.__version__,
            "fp32_gflops": gflops(torch.float32, size, repeats),
            "bf16_gflops": gflops(torch.bfloat16, size, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    result = measure(args.threads, args.size, args.repeats)
    print(json.dumps(result))
    print(f"matmul {args.size}³, {args.threads} threads: fp32 {result['fp32_gflops']:.0f} GFLOP/s, "
          f"bf16 {result['bf16_gflops']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()

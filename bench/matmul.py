"""The machine's ceiling: GFLOP/s of a 2048³ torch matmul in fp32 and bf16 (issue 7).

MFU in bench/run.py is model FLOPs / s divided by the fp32 figure measured here.
``--decode``: the generate workload's fp32 floor (bench/README.md, "Generation: where the time
goes"): GFLOP/s of a decode step's few-row matmuls on SmolLM2-135M's shapes, each layer with its
own weights as in the model (the weights stream from memory, not from cache), and the lower
bound it implies for 16 prompts × 64 tokens + 64 new.
Usage: python bench/matmul.py [--threads 2] [--size 2048] [--repeats 10] [--decode]
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


# SmolLM2-135M: hidden 576, MLP 1536, 9 query heads and 3 key/value heads of 64, 30 layers,
# vocabulary 49,152 (tied lm-head). (out, in) of each linear of one layer, then the lm-head.
LAYER_LINEARS = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576),
                 "o_proj": (576, 576), "gate_proj": (1536, 576), "up_proj": (1536, 576),
                 "down_proj": (576, 1536)}
LAYERS, LM_HEAD = 30, (49152, 576)


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def decode_floor(rows: int = 16, prompt: int = 64, new: int = 64, repeats: int = 5,
                 peak_gflops: float = 0.0) -> dict:
    """A decode step's matmuls, one token for each of ``rows`` rows: each shape over LAYERS
    distinct weights (as x·Wᵀ, torch's ``linear``, and as W·xᵀ, what rlhfkit's decode loop
    runs), the lm-head, and the whole step's matmuls in model order. The bound: the prefill's
    FLOPs (rows × prompt tokens through the body, the lm-head at the last position) at the
    2048³ peak + (new − 1) steps at the measured step time — no attention, norms or Python."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 1536, generator=gen)
    shapes = {}
    weights = {name: [torch.randn(o, i, generator=gen) for _ in range(LAYERS)]
               for name, (o, i) in LAYER_LINEARS.items()}
    weights["lm_head"] = [torch.randn(*LM_HEAD, generator=gen)]
    for name, ws in weights.items():
        out_f, in_f = ws[0].shape
        xs = x[:, :in_f].contiguous()
        flops = 2 * rows * in_f * out_f * len(ws)
        linear = _median_ms(lambda: [torch.nn.functional.linear(xs, w) for w in ws], repeats)
        row_major = _median_ms(lambda: [torch.mm(w, xs.t()) for w in ws], repeats)
        shapes[name] = {"shape": f"({rows} × {in_f}) · ({in_f} × {out_f})", "count": len(ws),
                        "x_wt_gflops": flops / linear / 1e6, "w_xt_gflops": flops / row_major / 1e6,
                        "w_xt_ms": row_major}

    inputs = {576: x[:, :576].contiguous(), 1536: x}  # (rows, in) as a layer's linears see them

    def step():
        for layer in range(LAYERS):
            for name, (_, in_f) in LAYER_LINEARS.items():
                torch.mm(weights[name][layer], inputs[in_f].t())
        torch.mm(weights["lm_head"][0], inputs[576].t())

    step_ms = _median_ms(step, repeats)
    body = LAYERS * sum(o * i for o, i in LAYER_LINEARS.values())  # weights of the 30 layers
    step_flops = 2 * rows * (body + LM_HEAD[0] * LM_HEAD[1])
    prefill_flops = 2 * rows * prompt * body + 2 * rows * LM_HEAD[0] * LM_HEAD[1]
    prefill_s = prefill_flops / (peak_gflops * 1e9) if peak_gflops else float("nan")
    return {"rows": rows, "shapes": shapes, "step_ms": step_ms,
            "step_gflops": step_flops / step_ms / 1e6,
            "step_weight_gb_per_s": 4 * (body + LM_HEAD[0] * LM_HEAD[1]) / step_ms / 1e6,
            "prefill_gflop": prefill_flops / 1e9, "prefill_s_at_peak": prefill_s,
            "decode_gflop": (new - 1) * step_flops / 1e9,
            "lower_bound_s": prefill_s + (new - 1) * step_ms / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--decode", action="store_true",
                        help="also the generate workload's decode matmuls and its lower bound")
    args = parser.parse_args()
    result = measure(args.threads, args.size, args.repeats)
    print(json.dumps(result))
    if args.decode:
        floor = decode_floor(peak_gflops=result["fp32_gflops"])
        print(json.dumps(floor))
        for name, row in floor["shapes"].items():
            print(f"{name:>9} {row['shape']:>26} ×{row['count']}: x·Wᵀ {row['x_wt_gflops']:.0f}, "
                  f"W·xᵀ {row['w_xt_gflops']:.0f} GFLOP/s")
        print(f"decode step matmuls {floor['step_ms']:.1f} ms ({floor['step_gflops']:.0f} GFLOP/s, "
              f"weights {floor['step_weight_gb_per_s']:.1f} GB/s); prefill "
              f"{floor['prefill_gflop']:.0f} GFLOP = {floor['prefill_s_at_peak']:.2f} s at peak; "
              f"lower bound {floor['lower_bound_s']:.2f} s per generate call")
    print(f"matmul {args.size}³, {args.threads} threads: "
          f"fp32 {result['fp32_gflops']:.0f} GFLOP/s, "
          f"bf16 {result['bf16_gflops']:.1f} GFLOP/s ({result['bf16_size']}³); "
          f"CPU {result['cpu']} {' '.join(result['flags'])}")


if __name__ == "__main__":
    main()

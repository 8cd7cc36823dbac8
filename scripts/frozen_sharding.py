"""A frozen model (PPO's reference, a reward model) on 2 processes: replicated vs sharded with
FSDP2. Prints each one's weight bytes per process and the median forward time of one process's
share of a PPO scoring batch (8 rows × 44 tokens: 32 prompt + 12 new). docs/scale-out.md holds
the figures and the choice they led to.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/frozen_sharding.py [model, default tiny-llama]
"""
import copy
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from rlhfkit.models import load_causal_lm, load_tokenizer


def local_mib(model) -> float:
    """Bytes of the weights this process holds (its shards when sharded)."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
               for p in model.parameters()) / 2**20


def forward_ms(model, ids, repeats: int = 20) -> float:
    with torch.no_grad():
        model(ids)  # warm-up (and FSDP2's lazy initialisation)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(name: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(name)
    frozen = load_causal_lm(name, tokenizer, torch.float32).eval().requires_grad_(False)
    ids = torch.randint(0, len(tokenizer), (8, 44))
    replicated = copy.deepcopy(frozen)
    sharded = copy.deepcopy(frozen)
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    rows = {"replicated": replicated, "sharded": sharded}
    results = {kind: (local_mib(model), forward_ms(model, ids)) for kind, model in rows.items()}
    if dist.get_rank() == 0:
        for kind, (mib, ms) in results.items():
            print(f"{name} {kind}: {mib:.1f} MiB of weights per process, {ms:.1f} ms per forward "
                  "(8 x 44 tokens)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama")

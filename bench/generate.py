"""Generation workload: 16 prompts × 64 tokens, 64 new tokens each, sampling (temperature 1,
no top-k / top-p filter), KV cache, fp32.

rlhfkit: ``rlhfkit.online.rollout.generate`` (PPO step 1: rlhfkit's decode loop, rlhfkit/models/generate.py,
same distribution as HF; stops at EOS, which with 16 sampled rows practically never ends all
rows before 64 tokens — the generated width is reported per step).
HF (the TRL side, in TRL's venv): ``model.generate(..., min_new_tokens=64)``, the path TRL's
GRPO/PPO trainers take without vLLM. New tokens/s counts 16 × generated width.
rlhfkit runs ``rollout.compile`` at its default; ``run.py --rlhfkit-set rollout.compile=true``
compiles the decode step (the compilation falls in the warm-up step).
"""
from __future__ import annotations

import os

import harness
import torch

PROMPTS, PROMPT_LEN, NEW = 16, 64, 64


def prompts(args) -> list[list[int]]:
    return harness.random_ids(PROMPTS, harness.scaled(PROMPT_LEN, args.scale), harness.SEED)


def new_tokens(args) -> int:
    return harness.scaled(NEW, args.scale)


def compile_setting() -> bool:
    """``rollout.compile``: its default, or the value given with ``run.py --rlhfkit-set``."""
    from rlhfkit.online.loop import RolloutPart

    chosen = dict(item.split("=", 1) for item in os.environ.get("RLHFKIT_BENCH_SET", "").split(",")
                  if "=" in item)
    if "rollout.compile" not in chosen:
        return RolloutPart().compile
    return chosen["rollout.compile"].strip().lower() in ("true", "1", "yes", "on")


def run_rlhfkit(args) -> None:
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.online import rollout

    tokenizer = load_tokenizer("smollm2-135m-instruct", str(harness.MODEL_DIR.parent))
    model = load_causal_lm("smollm2-135m-instruct", tokenizer, torch.float32,
                           str(harness.MODEL_DIR.parent))
    ids, n_new, compile = prompts(args), new_tokens(args), compile_setting()
    harness.ready("rlhfkit", ("rlhfkit",))

    def step():
        out = rollout.generate(model, ids, n_new, 1.0, 1.0, 0, tokenizer.pad_token_id,
                               tokenizer.eos_token_id, compile)
        return {"new_tokens": PROMPTS * (out.input_ids.shape[1] - out.prompt_width),
                "compile": compile}

    harness.serve(step, args.steps)
    harness.finish()


def run_trl(args) -> None:
    import theirs

    tokenizer = theirs.tokenizer()
    model = theirs.causal_lm().eval()
    ids = torch.tensor(prompts(args))
    n_new = new_tokens(args)
    harness.ready("trl", ("trl",))

    @torch.no_grad()
    def step():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n_new,
                             min_new_tokens=n_new, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, use_cache=True)
        return {"new_tokens": PROMPTS * (out.shape[1] - ids.shape[1])}

    harness.serve(step, args.steps)
    harness.finish()


if __name__ == "__main__":
    harness.main({"rlhfkit": run_rlhfkit, "trl": run_trl})

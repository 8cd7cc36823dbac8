"""PPO step 1, the rollout: the policy samples responses to left-padded prompts with the KV cache.

Layout of a rollout (pinned by tests/online/test_ppo.py::test_rollout_layout_and_eos_mask):
prompts are left-padded to one width P, so response token j sits at column P + j in every row::

    input_ids (B, P + R):   [pad pad prompt prompt | resp resp EOS pad]
    response_mask (B, R):                           [True True True False]

- ``response_mask`` is True up to and including the first EOS; what ``generate`` writes after
  it (padding; SmolLM2's pad id *is* its EOS id) is False and never counts anywhere.
- Response views are column slices: log-probs of the response tokens are
  ``response_logprobs(...).logprobs[:, P - 1:]`` (position t predicts token t + 1) and the
  critic's V_j, the value of the state *before* token j, is ``token_scores(...)[:, P - 1:-1]``.
- ``sampler_logprobs`` (B, R) are the decode loop's own log-probs of the sampled tokens, under
  the distribution the trainer scores (softmax of logits / rollout.temperature over the whole
  vocabulary; models/generate.py): the rollout-fidelity gap is their distance to the trainer's.

Also the logs of rollouts a run writes: samples.jsonl (prompt / response / score), rollouts.jsonl
(the per-token view: token strings with their KL, value, advantage, reward and the sampler–trainer
log-prob gap ``fidelity``) and eval.jsonl.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from rlhfkit.data import left_pad
from rlhfkit.models.generate import decode


class Rollout(NamedTuple):
    input_ids: torch.Tensor       # (B, P + R) left-padded prompt, response, padding after EOS
    attention_mask: torch.Tensor  # (B, P + R) bool: real prompt tokens and real response tokens
    response_mask: torch.Tensor   # (B, R) bool: response tokens up to and including the first EOS
    prompt_width: int             # P
    sampler_logprobs: torch.Tensor | None = None  # (B, R) the sampler's log-probs (0 after EOS)
    sampler_entropy: torch.Tensor | None = None   # (B, R) the sampler's entropy at each step

    @property
    def response_ids(self) -> torch.Tensor:  # (B, R)
        return self.input_ids[:, self.prompt_width:]

    @property
    def sequence_response_mask(self) -> torch.Tensor:
        """(B, P + R) bool: ``response_mask`` placed in the full sequence (prompt columns False)."""
        prompt_part = torch.zeros_like(self.attention_mask[:, :self.prompt_width])
        return torch.cat([prompt_part, self.response_mask], dim=1)

    def select(self, rows) -> "Rollout":
        return Rollout(self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows],
                       self.prompt_width,
                       *(None if t is None else t[rows]
                         for t in (self.sampler_logprobs, self.sampler_entropy)))


def response_mask_from(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, R) bool, True up to and including the first EOS of each row."""
    is_eos = response_ids == eos_id
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS strictly before t
    return eos_before == 0


def ended_with_eos(rollout: Rollout, eos_id: int) -> torch.Tensor:
    """(B,) bool: the response stopped at EOS (False = cut at max_new_tokens)."""
    return ((rollout.response_ids == eos_id) & rollout.response_mask).any(dim=1)


@torch.no_grad()
def generate(model, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
             top_p: float, top_k: int, pad_id: int, eos_id: int, compile: bool = False) -> Rollout:
    """Sample one response per prompt (eval mode, no gradients, KV cache, stop at EOS);
    temperature 0 = greedy. top_k 0 and top_p 1 switch those filters off.

    The distribution is HF ``generate``'s (temperature, then top-k, then top-p); the loop is
    rlhfkit's own (``models/generate.py::decode``: static KV cache, no per-step logits processors).
    Sampling draws from torch's global generator on the model's device: the trainer seeds it
    per iteration, so the rollouts of an iteration depend only on (seed, iteration, process)
    and the weights. The rollout carries the sampler's log-probs and entropy (``Decoded``).
    ``compile``: the decode step through ``torch.compile`` (``rollout.compile``; same tokens).
    """
    ids, prompt_mask = left_pad(prompt_ids, pad_id)  # (B, P)
    device = next(model.parameters()).device
    ids, prompt_mask = ids.to(device), prompt_mask.to(device)
    was_training = model.training
    model.eval()
    try:
        decoded = decode(model, ids, prompt_mask, max_new_tokens, temperature, top_k, top_p,
                         pad_id, eos_id, compile)
    finally:
        model.train(was_training)
    width, out = ids.shape[1], decoded.ids  # (B, P + R)
    response_mask = response_mask_from(out[:, width:], eos_id)  # (B, R)
    return Rollout(out, torch.cat([prompt_mask, response_mask], dim=1), response_mask, width,
                   decoded.logprobs, decoded.entropy)


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """Response texts (real tokens only, special tokens such as EOS dropped)."""
    return [tokenizer.decode(ids[mask], skip_special_tokens=True)
            for ids, mask in zip(rollout.response_ids.cpu(), rollout.response_mask.cpu())]


def token_strings(tokenizer, rollout: Rollout, row: int) -> list[str]:
    """Each real response token of ``row`` decoded on its own (for the per-token report view)."""
    ids = rollout.response_ids[row][rollout.response_mask[row]].tolist()
    return [tokenizer.decode([i]) for i in ids]


# ----------------------------------------------------------------------------- logs of rollouts
class JsonlLog:
    """An append-only JSONL file whose rows carry an ``iteration``; a resumed run cuts the rows
    written after its checkpoint so the file equals an uninterrupted run's."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled

    def truncate_after(self, iteration: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, rows: list[dict]) -> None:
        if not self.enabled or not rows:
            return
        with self.path.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


def sample_table(rows: list[dict], width: int = 60) -> str:
    """A plain-text table of prompt / response / score rows for the console."""
    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[:width - 1] + "…"

    lines = [f"{'prompt':<{width}} | {'response':<{width}} | score"]
    lines.append("-" * len(lines[0]))
    lines += [f"{cut(r['prompt']):<{width}} | {cut(r['response']):<{width}} | {r['score']:+.3f}"
              for r in rows]
    return "\n".join(lines)


def fidelity_view(gap, row: int, mask: torch.Tensor) -> dict:
    """``{"fidelity": [|Δ| per real token]}`` of one row, or {} where the trainer's log-probs of
    the row were not compared. ``gap``: (abs_gap (B, R), compared (B,) bool) or None."""
    if gap is None or not bool(gap[1][row]):
        return {}
    return {"fidelity": [round(v, 6) for v in gap[0][row][mask].tolist()]}


def rollout_views(tokenizer, num_samples: int, prompts: list[str], rollout: Rollout, scored,
                  rewards, raw, iteration: int, gap=None) -> tuple[list[dict], list[dict]]:
    """Rows for samples.jsonl and rollouts.jsonl (the per-token view: KL, value, advantage,
    reward and sampler–trainer gap |Δ log π| of every response token) of the first
    ``num_samples`` rollouts. ``scored`` holds (B, R) values and (B,) scores, ``rewards`` (B, R)
    kl/rewards, ``raw`` (B, R) advantages, ``gap`` (|Δ| (B, R), compared rows (B,))."""
    samples, tokens = [], []
    for row in range(min(num_samples, len(prompts))):
        mask = rollout.response_mask[row]
        score = float(scored.scores[row])
        samples.append({"iteration": iteration, "prompt": prompts[row],
                        "response": scored.responses[row], "score": score})
        tokens.append({"iteration": iteration, "prompt": prompts[row],
                       "tokens": token_strings(tokenizer, rollout, row),
                       **{name: [round(v, 5) for v in t[row][mask].tolist()] for name, t in (
                           ("kl", rewards.kl), ("values", scored.values),
                           ("advantages", raw.advantages), ("rewards", rewards.rewards))},
                       **fidelity_view(gap, row, mask), "score": score})
    return samples, tokens


class RolloutLogs:
    """samples.jsonl, rollouts.jsonl (per-token view) and eval.jsonl; main process only."""

    def __init__(self, output_dir: Path, is_main: bool, stage: str = "ppo"):
        self.stage = stage
        self.samples = JsonlLog(Path(output_dir) / "samples.jsonl", is_main)
        self.tokens = JsonlLog(Path(output_dir) / "rollouts.jsonl", is_main)
        self.eval = JsonlLog(Path(output_dir) / "eval.jsonl", is_main)
        self.is_main = is_main

    def truncate_after(self, iteration: int) -> None:
        for log in (self.samples, self.tokens, self.eval):
            log.truncate_after(iteration)

    def write_samples(self, samples: list[dict], token_rows: list[dict], iteration: int) -> None:
        self.samples.write(samples)
        self.tokens.write(token_rows)
        if self.is_main and samples:
            print(f"\n[{self.stage}] iteration {iteration} samples\n" + sample_table(samples))

"""Score (prompt, response) pairs with a reward model saved by ``rlhfkit rm``.

    scorer = RewardScorer.from_pretrained("runs/rm/final")
    scorer(["Movie review:"], ["A wonderful film."])          # → [2.31]
    score_file("runs/rm/final", "pairs.jsonl", "scores.jsonl")  # what `rlhfkit score` runs

The text is rendered exactly as in training: the template, system prompt and lengths come from
``final/reward_stats.json``, which also holds the reward mean/std (``normalize=True`` returns
(r − mean) / std). Tests: tests/trainers/test_reward.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rlhfkit.data import (
    DataError,
    collate_sequences,
    encode,
    read_records,
    render_prompt,
)
from rlhfkit.data.formats import parse_ranked
from rlhfkit.models import (
    load_scalar_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from rlhfkit.models.forward import sequence_scores
from rlhfkit.ops.ranking import ranking_loss

STATS_FILE = "reward_stats.json"


def load_reward_stats(model_dir) -> dict:
    """``reward_stats.json`` of a reward model: mean, std, template, system_prompt, lengths."""
    path = Path(model_dir) / STATS_FILE
    if not path.exists():
        raise DataError(f"{path} not found: expected a final/ folder written by `rlhfkit rm`")
    return json.loads(path.read_text())


class RewardScorer:
    """A trained reward model plus the rendering it was trained with."""

    def __init__(self, model, tokenizer, stats: dict, device: torch.device):
        self.model, self.tokenizer, self.stats, self.device = model, tokenizer, stats, device

    @classmethod
    def from_pretrained(cls, model_dir, device: str = "auto", dtype: str = "auto") -> "RewardScorer":
        stats = load_reward_stats(model_dir)
        target = resolve_device(device)
        tokenizer = load_tokenizer(str(model_dir))
        model = load_scalar_model(str(model_dir), tokenizer, resolve_dtype(dtype, target))
        return cls(model.to(target).eval(), tokenizer, stats, target)

    def score_messages(self, messages_list: list, responses: list[str], batch_size: int = 16,
                       normalize: bool = False) -> list[float]:
        """Rewards for chat prompts (tuples of (role, content)) and their responses."""
        if len(messages_list) != len(responses):
            raise ValueError(f"{len(messages_list)} prompts but {len(responses)} responses")
        s = self.stats
        encoded = [encode(self.tokenizer, render_prompt(messages, self.tokenizer, s["template"],
                                                        s["system_prompt"]),
                          response, s["max_prompt_length"], s["max_length"])
                   for messages, response in zip(messages_list, responses)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = collate_sequences(encoded[start:start + batch_size],
                                          self.tokenizer.pad_token_id).to(self.device)
                scores += sequence_scores(self.model, batch.input_ids,
                                          batch.attention_mask).tolist()
        if normalize:
            scores = [(r - s["mean"]) / max(s["std"], 1e-8) for r in scores]
        return scores

    def __call__(self, prompts: list[str], responses: list[str], batch_size: int = 16,
                 normalize: bool = False) -> list[float]:
        """Rewards for single-turn prompts (plain strings; "" for prompt-free models)."""
        return self.score_messages([(("user", p),) for p in prompts], responses, batch_size,
                                   normalize)


def _parse_row(record):
    """(messages, [responses]) of a {"prompt","response"} row, a pair or a ranked list."""
    row = record.row
    if "response" in row:
        if not isinstance(row["response"], str) or not isinstance(row.get("prompt", ""), str):
            raise DataError(f"{record.where()}: expected string fields 'prompt' and 'response'")
        return (("user", row.get("prompt", "")),), [row["response"]]
    example = parse_ranked(record)
    return example.messages, list(example.responses)


def score_file(model_dir, data_path, output_path=None, batch_size: int = 16,
               device: str = "auto", dtype: str = "auto") -> dict:
    """Write one JSON line per input row: {"score": r} for {"prompt","response"} rows,
    {"scores": [r_1..r_K]} (best first) for pairs and ranked lists; ``output_path`` None →
    stdout. Returns a summary; for ranked rows it holds the pairwise accuracy."""
    scorer = RewardScorer.from_pretrained(model_dir, device, dtype)
    parsed = [_parse_row(record) for record in read_records(str(data_path))]
    flat_messages = [m for m, responses in parsed for _ in responses]
    flat = scorer.score_messages(flat_messages, [r for _, rs in parsed for r in rs], batch_size)
    rows, start = [], 0
    for _, responses in parsed:
        rows.append(flat[start:start + len(responses)])
        start += len(responses)
    lines = [json.dumps({"score": r[0]} if len(r) == 1 else {"scores": r}) + "\n" for r in rows]
    handle = open(output_path, "w") if output_path else sys.stdout
    try:
        handle.writelines(lines)
    finally:
        if output_path:
            handle.close()
    return summarize(rows)


def summarize(rows: list[list[float]]) -> dict:
    """Row count, mean score and, for ranked rows, pairwise accuracy over all i<j pairs."""
    summary = {"rows": len(rows), "mean_score": sum(map(sum, rows)) / max(sum(map(len, rows)), 1)}
    ranked = [r for r in rows if len(r) > 1]
    if ranked:
        k = max(len(r) for r in ranked)
        rewards = torch.tensor([r + [0.0] * (k - len(r)) for r in ranked], dtype=torch.float64)
        mask = torch.tensor([[i < len(r) for i in range(k)] for r in ranked])
        out = ranking_loss(rewards, mask)
        summary.update(ranked_rows=len(ranked), pairs=int(out.num_pairs),
                       pair_accuracy=float(out.pair_accuracy), loss=float(out.loss))
    return summary

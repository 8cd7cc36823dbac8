"""Where tasks come from: a file of candidates (`label import`) or the policy itself
(`label generate`), and the reward-model scores the ``uncertainty`` order sorts by.

- import: rows {"prompt", "responses": [...], "models": [...] (optional)}.
- generate: K samples per prompt with the project's decode loop (online.rollout.generate,
  sampling keys as ``rollout.*``); every candidate stores the model/checkpoint that wrote it
  and the sampling settings.
- both: ``tag`` names the batch the new tasks belong to (``tasks.tag``; ``check_tag``).
Identical responses of one prompt are stored once (an annotator would only tie them); a
prompt left with fewer than two distinct responses makes no task. Tests:
tests/label/test_sources.py.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from itertools import combinations

import torch
from sqlalchemy import bindparam, select, update
from tqdm import tqdm

from rlhfkit.data import DataError, encode, read_records, render_prompt
from rlhfkit.data.formats import parse_prompt
from rlhfkit.label.schema import candidates, prompts, tasks
from rlhfkit.label.store import Store, add_task, count_added

IMPORTED = "imported"
MAX_TAG = 100  # tasks.tag is String(100)


def check_tag(tag: str | None) -> None:
    """A batch name for ``tasks.tag`` (None: no tag): 1–100 printable characters, no space at
    either end — what `label leaderboard|export|stats --tag PREFIX` will match it by."""
    if tag is None:
        return
    if not tag.strip() or tag != tag.strip() or len(tag) > MAX_TAG or not tag.isprintable():
        shown = tag if len(tag) <= 40 else tag[:40] + "…"
        raise DataError(f"tag {shown!r} ({len(tag)} characters): expected 1–{MAX_TAG} "
                        "printable characters, no space at either end (e.g. round-1/sample)")


def distinct_index(texts: list[str]) -> list[int]:
    """Positions of the texts a task keeps: identical texts once (the first), blank ones out."""
    seen, out = set(), []
    for i, text in enumerate(texts):
        if text.strip() and text not in seen:
            seen.add(text)
            out.append(i)
    return out


def distinct(responses: list[str], models: list[str], settings: list[dict]):
    keep = distinct_index(responses)
    return [[column[i] for i in keep] for column in (responses, models, settings)]


def read_candidates(path: str) -> list[tuple]:
    """Rows of ``path`` → (messages, responses, models); DataError names file:line."""
    out = []
    for record in read_records(path):
        row = record.row
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or \
                not all(isinstance(r, str) for r in responses):
            raise DataError(f"{record.where()}: field 'responses': expected a list of ≥ 2 "
                            "strings (the candidates to rank)")
        models = row.get("models", [IMPORTED] * len(responses))
        if not isinstance(models, list) or len(models) != len(responses) or \
                not all(isinstance(m, str) for m in models):
            raise DataError(f"{record.where()}: field 'models': expected one string per "
                            f"response ({len(responses)})")
        out.append((parse_prompt(record).messages, responses, models))
    return out


def import_candidates(store: Store, path: str, seed: int = 0,
                      tag: str | None = None) -> tuple[int, int]:
    """Add a task per row → (tasks added, rows skipped for < 2 distinct responses); ``tag``
    names the batch (``tasks.tag``)."""
    check_tag(tag)
    rows = read_candidates(path)
    rng = random.Random(seed)
    added = skipped = 0
    with store.transaction() as conn:  # all rows or none
        for messages, responses, models in rows:
            texts, kept_models, settings = distinct(responses, models, [{}] * len(responses))
            if len(texts) < 2:
                skipped += 1
                continue
            add_task(conn, messages, texts, kept_models, settings, rng, tag, count=False)
            added += 1
        count_added(conn, added)
    return added, skipped


@dataclass(frozen=True)
class Sampling:
    """The ``rollout.*`` sampling keys of PPO/GRPO, stored with every generated candidate."""
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


def generate_candidates(store: Store, policy: str, prompts_path: str, k: int,
                        sampling: Sampling, batch_size: int = 8, template: str = "auto",
                        max_prompt_length: int = 256, device: str = "auto",
                        tag: str | None = None) -> tuple[int, int]:
    """Sample ``k`` responses per prompt from ``policy`` and add one task per prompt →
    (tasks added, prompts skipped for < 2 distinct responses); ``tag`` names the batch."""
    check_tag(tag)
    examples = [parse_prompt(record) for record in read_records(prompts_path)]
    if not examples:
        raise DataError(f"{prompts_path}: no prompts")
    samples = sample_responses(policy, [e.messages for e in examples], k, sampling, batch_size,
                               template, max_prompt_length, device)
    settings = asdict(sampling)
    rng = random.Random(sampling.seed)
    added = skipped = 0
    with store.transaction() as conn:
        for example, responses in zip(examples, samples):
            texts, models, kept = distinct(responses, [policy] * k, [settings] * k)
            if len(texts) < 2:
                skipped += 1
                continue
            add_task(conn, example.messages, texts, models, kept, rng, tag, count=False)
            added += 1
        count_added(conn, added)
    return added, skipped


def sample_responses(policy: str, prompts_messages: list, k: int, sampling: Sampling,
                     batch_size: int = 8, template: str = "auto", max_prompt_length: int = 256,
                     device: str = "auto") -> list[list[str]]:
    """``k`` sampled responses (stripped) for each prompt's messages, from ``policy`` with the
    project's decode loop; the sampling RNG is seeded with ``sampling.seed``."""
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device
    from rlhfkit.online.rollout import decode_responses, generate

    target = resolve_device(device)
    tokenizer = load_tokenizer(policy)
    model = load_causal_lm(policy, tokenizer).to(target).eval()
    torch.manual_seed(sampling.seed)
    ids = [encode(tokenizer, render_prompt(messages, tokenizer, template), None,
                  max_prompt_length, max_prompt_length + sampling.max_new_tokens).prompt_ids
           for messages in prompts_messages]
    samples: list[list[str]] = [[] for _ in prompts_messages]
    jobs = [i for i in range(len(prompts_messages)) for _ in range(k)]  # prompt i, k times
    with tqdm(total=len(jobs), desc="label generate", unit="response") as bar:
        for start in range(0, len(jobs), batch_size):
            rows = jobs[start:start + batch_size]
            rollout = generate(model, [ids[i] for i in rows], sampling.max_new_tokens,
                               sampling.temperature, sampling.top_p, sampling.top_k,
                               tokenizer.pad_token_id, tokenizer.eos_token_id)
            for i, text in zip(rows, decode_responses(tokenizer, rollout)):
                samples[i].append(text.strip())
            bar.update(len(rows))
    return samples


def smallest_gap(scores: list[float]) -> float:
    """How close the reward model finds a task: the smallest |r_i − r_j| over its candidates."""
    return min(abs(a - b) for a, b in combinations(scores, 2))


def score_candidates(store: Store, reward_model: str, batch_size: int = 16,
                     device: str = "auto", only_missing: bool = False) -> int:
    """Score every candidate with a reward model saved by `rlhfkit rm` (its final/ folder);
    each task's ``score_gap`` (the ``uncertainty`` order) follows. Returns tasks scored."""
    from rlhfkit.models.scoring import RewardScorer

    with store.engine.connect() as conn:
        query = (select(tasks.c.id, prompts.c.messages, candidates.c.id, candidates.c.text)
                 .join(prompts, prompts.c.id == tasks.c.prompt_id)
                 .join(candidates, candidates.c.task_id == tasks.c.id)
                 .order_by(tasks.c.id, candidates.c.slot))
        if only_missing:
            query = query.where(tasks.c.score_gap.is_(None))
        rows = conn.execute(query).all()
    if not rows:
        return 0
    scorer = RewardScorer.from_pretrained(reward_model, device)
    scores = scorer.score_messages([tuple(map(tuple, r[1])) for r in rows], [r[3] for r in rows],
                                   batch_size)
    per_task: dict[int, list[float]] = {}
    for row, score in zip(rows, scores):
        per_task.setdefault(row[0], []).append(score)
    with store.transaction() as conn:
        conn.execute(update(candidates).where(candidates.c.id == bindparam("cid"))
                     .values(rm_score=bindparam("score")),
                     [{"cid": row[2], "score": score} for row, score in zip(rows, scores)])
        conn.execute(update(tasks).where(tasks.c.id == bindparam("tid"))
                     .values(score_gap=bindparam("gap")),
                     [{"tid": t, "gap": smallest_gap(s)} for t, s in per_task.items()])
    return len(per_task)

"""The five steps of a round of ``rlhfkit loop`` (Anthropic's iterated online RLHF, Bai et al.
2022, arXiv 2204.05862 §4.5), each restartable on its own:

  1. sample   — policy_r writes K candidates for each prompt of the round's fresh slice
                (``round_slice``); the ``selection`` keeps labels_per_round of them (round 0:
                every prompt of its slice when first_round_labels is set); one transaction
                adds them to the store tagged ``round-<r>/sample`` (done = the tag has tasks).
  2. rank     — the annotator ranks them (rlhfkit/loop/annotate.py; done = every task judged).
  3. rm       — the rm stage on every ranking so far (label/export.py's merge), held-out share
                per round; warm start from RM_{r−1} or scratch (done = round-<r>/rm.json).
  4. policy   — ppo / grpo against RM_r, or dpo on the round's pairs, from policy_r →
                policy_{r+1}, at the section's learning rate × later_lr_scale after round 0
                (done = round-<r>/policy.json; the stage resumes its checkpoints).
  5. compare  — policy_{r+1}, policy_r and policy_0 answer the held-out prompts
                (``compare_samples`` answers each, one sampling seed in every round: policy_r's
                and policy_0's are round r−1's, read back from the store), one ranking task per
                prompt, tagged ``round-<r>/compare``, ranked by the annotator; scores by RM_r
                and by the judge, KL to round 0 (done = round-<r>/compare.json).
A step's done-marker is written after its work is durable; the store's own state (tags,
judgments) decides steps 1, 2 and 5's ranking, so a ``kill -9`` anywhere followed by a rerun
does each thing once. Tests: tests/loop/.
"""
from __future__ import annotations

import importlib
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from sqlalchemy import bindparam, select, update

from rlhfkit.data import collate_sequences, encode, read_records, render_prompt
from rlhfkit.data.formats import parse_prompt
from rlhfkit.label.export import merged_tasks, pair_rows, ranked_rows
from rlhfkit.label.schema import candidates, prompts, tasks
from rlhfkit.label.sources import (
    Sampling,
    distinct,
    distinct_index,
    sample_responses,
    smallest_gap,
)
from rlhfkit.label.store import Store, add_task
from rlhfkit.loop.config import LoopConfig, stage_config
from rlhfkit.ops.ranking import ranking_loss

SAMPLE, COMPARE = "sample", "compare"


def tag(r: int, step: str) -> str:
    return f"round-{r}/{step}"


def policy_name(r: int) -> str:
    """The name policy_r's candidates carry in the store (candidates.model)."""
    return f"policy_{r}"


# ----------------------------------------------------------------------------- where things are
@dataclass(frozen=True)
class Layout:
    config: LoopConfig

    @property
    def root(self) -> Path:
        return Path(self.config.output_dir)

    def round_dir(self, r: int) -> Path:
        return self.root / f"round-{r}"

    def policy(self, r: int) -> str:
        """policy_r: the configured start, then each round's trained final/."""
        return self.config.model.name if r == 0 else str(self.round_dir(r - 1) / "policy" / "final")

    def reward_model(self, r: int) -> Path:
        return self.round_dir(r) / "rm" / "final"

    def rm_train_path(self, r: int) -> Path:
        """The rankings RM_r was trained on (ranked rows); selection: ensemble resamples them."""
        return self.round_dir(r) / "rm_data" / "train.jsonl"


@dataclass(frozen=True)
class Prompts:
    """The pool split once: round slices (never overlapping) and the held-out compare prompts."""
    pool: list        # records' rows, in file order (written to pool.jsonl for the policy step)
    pool_messages: list
    compare_messages: list


def load_prompts(config: LoopConfig) -> Prompts:
    from rlhfkit.config import ConfigError

    records = read_records(config.data.train_path, config.data.split, config.data.subset)
    examples = [parse_prompt(r) for r in records]
    if config.data.eval_path:
        held = [parse_prompt(r) for r in read_records(
            config.data.eval_path, config.data.eval_split, config.data.subset)]
        if len(held) < config.compare_prompts:  # a shorter slice would pass unnoticed
            raise ConfigError(f"compare_prompts={config.compare_prompts}, but data.eval_path "
                              f"({config.data.eval_path}) has {len(held)} prompts")
        compare = [e.messages for e in held[:config.compare_prompts]]
    else:  # the last rows of the pool, never sampled nor trained on
        compare = [e.messages for e in examples[-config.compare_prompts:]]
        records, examples = (records[:-config.compare_prompts],
                             examples[:-config.compare_prompts])
    needed = round_slice(config, config.rounds - 1)[1]
    if needed > len(examples):
        P, R = config.prompts_per_round, config.rounds
        rounds_ = (f"first_round_labels={config.first_round_labels} + prompts_per_round={P} × "
                   f"{R - 1} more rounds" if config.first_round_labels else
                   f"prompts_per_round={P} × rounds={R}")
        raise ConfigError(f"{rounds_} = {needed} fresh prompts, but the pool "
                          f"({config.data.train_path}) has {len(examples)}"
                          + ("" if config.data.eval_path else
                             f" after the {config.compare_prompts} compare_prompts"))
    return Prompts([r.row for r in records], [e.messages for e in examples], compare)


def round_slice(config: LoopConfig, r: int) -> tuple[int, int]:
    """[start, stop) of round r's fresh prompts in the pool: round 0's first_round_labels
    (when set, else prompts_per_round), then prompts_per_round a round, never overlapping."""
    first = config.first_round_labels or config.prompts_per_round
    if r == 0:
        return 0, first
    start = first + (r - 1) * config.prompts_per_round
    return start, start + config.prompts_per_round


def round_labels(config: LoopConfig, r: int) -> int:
    """Tasks ranked in round r: first_round_labels in round 0 when set, else labels_per_round."""
    return config.first_round_labels if r == 0 and config.first_round_labels \
        else config.labels_per_round


def sampling(config: LoopConfig, seed: int) -> Sampling:
    rollout = config.rollout
    return Sampling(rollout.max_new_tokens, rollout.temperature, rollout.top_p, rollout.top_k,
                    seed)


def sample_texts(config: LoopConfig, policy: str, messages: list, k: int, seed: int):
    return sample_responses(policy, messages, k, sampling(config, seed),
                            config.sample_batch_size, config.data.template,
                            config.data.max_prompt_length, config.model.device)


def tagged_task_ids(store: Store, tag_: str) -> list[int]:
    with store.engine.connect() as conn:
        return [row[0] for row in conn.execute(
            select(tasks.c.id).where(tasks.c.tag == tag_).order_by(tasks.c.id))]


# ----------------------------------------------------------------------------- 1. sample
def select_tasks(config: LoopConfig, layout: Layout, r: int, messages: list,
                 samples: list[list[str]]) -> tuple[list[int], dict]:
    """Indices of the prompts to rank, and {index: RM_{r−1} scores} when scored.
    random (and round 0): a seeded sample; uncertainty (smallest score gap first) and ensemble
    (largest disagreement of RM_{r−1}'s bootstrap heads first): rlhfkit/loop/selection.py."""
    from rlhfkit.loop.selection import PRIORITIES

    usable = [i for i, s in enumerate(samples) if len({t for t in s if t.strip()}) >= 2]
    n = min(round_labels(config, r), len(usable))
    if config.selection == "random" or r == 0:
        return sorted(random.Random(config.seed * 7919 + r).sample(usable, n)), {}
    priority, scores = PRIORITIES[config.selection](
        config, r, layout.reward_model(r - 1), layout.rm_train_path(r - 1), messages, samples,
        usable)
    return sorted(sorted(usable, key=lambda i: (priority[i], i))[:n]), scores


def distinct_scores(texts: list[str], scores: list[float]) -> list[float]:
    """The scores of a prompt's candidates as the store keeps them (identical texts once)."""
    return [scores[i] for i in distinct_index(texts)]


def sample_step(config: LoopConfig, layout: Layout, store: Store, pool: Prompts, r: int) -> int:
    """1. policy_r's K candidates for the round's slice; the selected tasks in one transaction."""
    existing = tagged_task_ids(store, tag(r, SAMPLE))
    if existing:
        return len(existing)
    start, stop = round_slice(config, r)
    messages = pool.pool_messages[start:stop]
    policy = layout.policy(r)
    samples = sample_texts(config, policy, messages, config.k, config.seed * 1000 + r)
    chosen, scores = select_tasks(config, layout, r, messages, samples)
    settings = {**sampling(config, config.seed * 1000 + r).__dict__, "checkpoint": policy}
    rng = random.Random(config.seed * 31 + r)
    with store.transaction() as conn:  # all the round's tasks or none
        for i in chosen:
            texts, models, kept = distinct(samples[i], [policy_name(r)] * config.k,
                                           [settings] * config.k)
            task_id = add_task(conn, messages[i], texts, models, kept, rng, tag(r, SAMPLE))
            if i in scores:  # the uncertainty order of a human queue, and the record
                store_scores(conn, task_id, distinct_scores(samples[i], scores[i]))
    return len(chosen)


def store_scores(conn, task_id: int, scores: list[float]) -> None:
    ids = [row[0] for row in conn.execute(select(candidates.c.id).where(
        candidates.c.task_id == task_id).order_by(candidates.c.slot))]
    conn.execute(update(candidates).where(candidates.c.id == bindparam("cid"))
                 .values(rm_score=bindparam("score")),
                 [{"cid": cid, "score": s} for cid, s in zip(ids, scores)])
    conn.execute(update(tasks).where(tasks.c.id == task_id)
                 .values(score_gap=smallest_gap(scores)))


# ----------------------------------------------------------------------------- 3. reward model
def rankings_by_round(store: Store, rounds: int) -> dict[int, list[dict]]:
    """Round → its merged rankings (label/export.py: Copeland over annotators, all-bad and
    all-tied tasks dropped) as ranked rows, from the sample tasks only."""
    with store.engine.connect() as conn:
        round_of = {tid: int(t.split("/")[0].removeprefix("round-")) for tid, t in conn.execute(
            select(tasks.c.id, tasks.c.tag).where(tasks.c.tag.like("round-%/" + SAMPLE)))}
    out: dict[int, list[dict]] = {r: [] for r in range(rounds)}
    for row in ranked_rows(merged_tasks(store)):
        r = round_of.get(row["task_id"])
        if r is not None and r < rounds:
            out[r].append(row)
    return out


def split_heldout(rows: list[dict], share: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded ``share`` of a round's rankings (at least one when there
    are two or more), the same on every rerun."""
    ids = sorted(row["task_id"] for row in rows)
    n = min(max(round(share * len(ids)), 1 if len(ids) >= 2 else 0), len(ids))
    held = set(random.Random(seed).sample(ids, n))
    return ([row for row in rows if row["task_id"] not in held],
            [row for row in rows if row["task_id"] in held])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def reward_scorer(model_dir, device: str):
    """A trained reward model, loaded once for every accuracy measured on it."""
    from rlhfkit.models.scoring import RewardScorer

    return RewardScorer.from_pretrained(model_dir, device)


def pair_accuracy(scorer, rows: list[dict]) -> tuple[float | None, int]:
    """(share of strictly ordered pairs the reward model ``scorer`` (``reward_scorer``) orders
    right, pairs) on ranked rows."""
    if not rows:
        return None, 0
    flat = scorer([row["prompt"] for row in rows for _ in row["responses"]],
                  [text for row in rows for text in row["responses"]])
    k = max(len(row["responses"]) for row in rows)
    rewards = torch.zeros(len(rows), k, dtype=torch.float64)
    mask = torch.zeros(len(rows), k, dtype=torch.bool)
    ranks = torch.full((len(rows), k), k + 1, dtype=torch.long)
    start = 0
    for b, row in enumerate(rows):
        n = len(row["responses"])
        rewards[b, :n] = torch.tensor(flat[start:start + n], dtype=torch.float64)
        mask[b, :n] = True
        ranks[b, :n] = torch.tensor(row["ranks"])
        start += n
    out = ranking_loss(rewards, mask, ranks=ranks)
    return float(out.pair_accuracy), int(out.num_pairs)


def truth_rows(rows: list[dict], judge) -> list[dict]:
    """Held-out ranked rows re-ranked by the judge's noise-free scores (``judge(prompts,
    responses) -> (B,)``; a simulated annotator's hidden truth): the same pairs without the
    annotator's noise, so a reward model is measured against what the labels were drawn from."""
    from rlhfkit.loop.annotate import truth_ranks

    if not rows:
        return []
    flat = judge([row["prompt"] for row in rows for _ in row["responses"]],
                 [text for row in rows for text in row["responses"]])
    out, start = [], 0
    for row in rows:
        n = len(row["responses"])
        scores = [float(s) for s in flat[start:start + n]]
        start += n
        out.append({**row, "ranks": truth_ranks(scores, row["task_id"])})
    return out


def truth_accuracy(rm, rm0, heldout: list[dict], judge) -> dict:
    """RM_r's and RM_0's pair accuracy (loaded scorers; RM_0 is RM_r in round 0) on round r's
    held-out rankings re-ranked by the judge without noise (``truth_rows``): {"rm", "rm0",
    "pairs"}."""
    truth = truth_rows(heldout, judge)
    accuracy, pairs = pair_accuracy(rm, truth)
    return {"rm": accuracy, "rm0": pair_accuracy(rm0, truth)[0] if rm0 is not rm else accuracy,
            "pairs": pairs}


def rm_step(config: LoopConfig, layout: Layout, store: Store, r: int, judge=None) -> dict:
    """3. RM_r on every ranking so far; held-out accuracy on each round's held-out share, and
    with a judge (its noise-free scores) RM_r's and RM_0's on this round's against it."""
    done = layout.round_dir(r) / "rm.json"
    if done.exists():
        return json.loads(done.read_text())
    by_round = rankings_by_round(store, r + 1)
    splits = {j: split_heldout(by_round[j], config.heldout_share, config.seed * 7 + j)
              for j in range(r + 1)}
    data_dir = layout.rm_train_path(r).parent
    train_rows = [row for j in range(r + 1) for row in splits[j][0]]
    write_jsonl(layout.rm_train_path(r), train_rows)
    for j in range(r + 1):
        write_jsonl(data_dir / f"heldout-{j}.jsonl", splits[j][1])
    heldout = data_dir / f"heldout-{r}.jsonl"
    warm = config.rm_init == "warm" and r > 0
    rm_config = stage_config(config, "rm", str(layout.round_dir(r) / "rm"),
                             str(layout.reward_model(r - 1)) if warm else "",
                             str(layout.rm_train_path(r)), str(heldout) if splits[r][1] else "")
    run_stage("rm", rm_config)
    rm = reward_scorer(layout.reward_model(r), config.model.device)
    rm0 = reward_scorer(layout.reward_model(0), config.model.device) if r > 0 else rm
    accuracy = {}
    for j in range(r + 1):
        acc, pairs = pair_accuracy(rm, splits[j][1])
        accuracy[j] = {"accuracy": acc, "pairs": pairs}
    # the point of iterating: is RM_0 still as good on the newest policy's samples?
    rm0_on_new = pair_accuracy(rm0, splits[r][1])[0] if r > 0 else accuracy[0]["accuracy"]
    result = {"train_rankings": len(train_rows), "heldout_accuracy": accuracy,
              "rm0_accuracy_on_this_round": rm0_on_new}
    if judge is not None:
        result["truth_accuracy"] = truth_accuracy(rm, rm0, splits[r][1], judge)
    done.write_text(json.dumps(result, indent=2))
    return json.loads(done.read_text())  # as a rerun reads it (round keys as strings)


def run_stage(stage: str, stage_config_) -> dict:
    """A stage's own ``run`` (the loop never trains by itself)."""
    from rlhfkit.loop.config import STAGE_CLASSES

    return importlib.import_module(STAGE_CLASSES[stage][0]).run(stage_config_)


# ----------------------------------------------------------------------------- 4. policy
def policy_step(config: LoopConfig, layout: Layout, store: Store, r: int) -> dict:
    """4. policy_r → policy_{r+1} with the configured algorithm and its own section."""
    done = layout.round_dir(r) / "policy.json"
    if done.exists():
        return json.loads(done.read_text())
    output_dir = str(layout.round_dir(r) / "policy")
    if config.algorithm == "dpo":  # online DPO: the round's own pairs
        ids = set(tagged_task_ids(store, tag(r, SAMPLE)))
        pairs = [row for row in pair_rows([t for t in merged_tasks(store) if t["task_id"] in ids])]
        path = layout.round_dir(r) / "pairs.jsonl"
        write_jsonl(path, pairs)
        stage = stage_config(config, "dpo", output_dir, layout.policy(r), str(path), "")
    else:
        stage = stage_config(config, config.algorithm, output_dir, layout.policy(r),
                             str(layout.root / "pool.jsonl"), str(layout.reward_model(r)))
    summary = run_stage(config.algorithm, with_round_learning_rate(config, stage, r))
    result = {"algorithm": config.algorithm,
              "summary": summary if isinstance(summary, dict) else {}}
    done.write_text(json.dumps(result, indent=2, default=float))
    return result


def round_learning_rate(config: LoopConfig, learning_rate: float, r: int) -> float:
    """The policy step's learning rate in round r: the section's, × later_lr_scale after
    round 0."""
    return learning_rate * (config.later_lr_scale if r > 0 else 1.0)


def with_round_learning_rate(config: LoopConfig, stage, r: int):
    """The policy stage's config with round r's learning rate (``round_learning_rate``)."""
    learning_rate = round_learning_rate(config, stage.train.learning_rate, r)
    if learning_rate == stage.train.learning_rate:
        return stage
    return replace(stage, train=replace(stage.train, learning_rate=learning_rate))


# ----------------------------------------------------------------------------- 5. compare
def compare_models(r: int) -> list[int]:
    """The policies compared after round r: the new one, the previous one, round 0's."""
    return sorted({r + 1, r, 0}, reverse=True)


def compare_seed(config: LoopConfig) -> int:
    """The sampling seed of every compare answer, in every round and of every policy: the
    policies answer with the same sampling noise (common random numbers), and policy_r's answers
    in round r are the ones round r−1 decoded for it (``earlier_answers``)."""
    return config.seed * 1000 + 500


def compare_tasks_step(config: LoopConfig, layout: Layout, store: Store, pool: Prompts,
                       r: int) -> list[str]:
    """5a. One task per held-out prompt: ``compare_samples`` answers of each compared policy (not
    deduplicated: two equal answers are a tie for the annotator). Answers round r−1's tasks
    already hold (policy_r, policy_0) are reused, the others decoded → the reused models."""
    if tagged_task_ids(store, tag(r, COMPARE)):
        return []
    seed, n, models = compare_seed(config), config.compare_samples, compare_models(r)
    settings = {i: {**sampling(config, seed).__dict__, "checkpoint": layout.policy(i)}
                for i in models}
    answers = earlier_answers(store, r - 1, pool.compare_messages, n,
                              {policy_name(i): settings[i] for i in models}) if r > 0 else {}
    reused = sorted(answers)
    for i in models:
        if policy_name(i) not in answers:
            answers[policy_name(i)] = sample_texts(config, layout.policy(i),
                                                   pool.compare_messages, n, seed)
    rng = random.Random(config.seed * 31 + 17 + r)
    with store.transaction() as conn:
        for p, messages in enumerate(pool.compare_messages):
            add_task(conn, messages, [t for i in models for t in answers[policy_name(i)][p]],
                     [policy_name(i) for i in models for _ in range(n)],
                     [settings[i] for i in models for _ in range(n)], rng, tag(r, COMPARE))
    return reused


def compare_rows(store: Store, r: int) -> list[tuple]:
    """(task id, prompt messages, model, text, settings) of every candidate of round r's compare
    tasks, in task then slot order."""
    with store.engine.connect() as conn:
        return list(conn.execute(
            select(tasks.c.id, prompts.c.messages, candidates.c.model, candidates.c.text,
                   candidates.c.settings)
            .join(prompts, prompts.c.id == tasks.c.prompt_id)
            .join(candidates, candidates.c.task_id == tasks.c.id)
            .where(tasks.c.tag == tag(r, COMPARE))
            .order_by(tasks.c.id, candidates.c.slot)))


def earlier_answers(store: Store, r: int, messages: list, n: int,
                    settings: dict[str, dict]) -> dict[str, list[list[str]]]:
    """Model name → its ``n`` answers per prompt in round r's compare tasks, for each model of
    ``settings`` whose every answer there was decoded with those settings (checkpoint, sampling,
    seed) for exactly these prompts in this order; models that were not are left out."""
    by_task: dict[int, tuple[list, dict]] = {}
    for task_id, stored_messages, model, text, setting in compare_rows(store, r):
        by_task.setdefault(task_id, (stored_messages, {}))[1].setdefault(
            model, []).append((text, setting))
    found = list(by_task.values())
    if [[list(m) for m in stored] for stored, _ in found] != \
            [[list(m) for m in wanted] for wanted in messages]:
        return {}
    out = {}
    for model, wanted in settings.items():
        per_prompt = [answers.get(model, []) for _, answers in found]
        if all(len(a) == n and all(s == wanted for _, s in a) for a in per_prompt):
            out[model] = [[text for text, _ in a] for a in per_prompt]
    return out


def compare_texts(store: Store, r: int) -> dict[str, tuple[list, list[str]]]:
    """Model name → (prompts' messages, its responses) of round r's compare tasks."""
    out: dict[str, tuple[list, list[str]]] = {}
    for _, messages, model, text, _ in compare_rows(store, r):
        out.setdefault(model, ([], []))
        out[model][0].append(tuple(tuple(m) for m in messages))
        out[model][1].append(text)
    return out


@torch.no_grad()
def kl_to(policy: str, reference: str, messages: list, responses: list[str],
          config: LoopConfig) -> float:
    """Mean over responses of Σ_t log π(y_t) − log π_0(y_t) (the k1 estimate of KL(π‖π_0) in
    nats per response, at the sampling temperature) on the responses re-tokenised from text,
    in passes of ``sample_batch_size`` responses."""
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device
    from rlhfkit.models.forward import response_logprobs

    device = resolve_device(config.model.device)
    tokenizer = load_tokenizer(policy)
    encoded = [encode(tokenizer, render_prompt(m, tokenizer, config.data.template,
                                               config.data.system_prompt),
                      text, config.data.max_prompt_length, config.data.max_length, add_eos=False)
               for m, text in zip(messages, responses)]
    encoded = [e for e in encoded if e.response_ids]
    if not encoded:
        return 0.0
    rows = config.sample_batch_size  # passes of this many responses: the logits' memory
    totals = []
    for name in (policy, reference):
        model = load_causal_lm(name, tokenizer).to(device).eval()
        sums = []
        for start in range(0, len(encoded), rows):
            batch = collate_sequences(encoded[start:start + rows],
                                      tokenizer.pad_token_id).to(device)
            out = response_logprobs(model, batch.input_ids, batch.attention_mask,
                                    batch.response_mask, False, config.rollout.temperature)
            sums.append(out.logprobs.double().sum(1))  # (B,) zeros off the response
        totals.append(torch.cat(sums))
    return float((totals[0] - totals[1]).mean())


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None

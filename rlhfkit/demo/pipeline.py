"""``rlhfkit demo``: the whole RLHF pipeline on the embedded model, on a laptop CPU.

Teach SmolLM2-135M-Instruct to continue IMDB review openings positively:
  1. stage 2 — a sentiment reward model from IMDB preference pairs (positive review ≻ negative
     review) on all-MiniLM-L6-v2 (a small encoder: ten times cheaper per token than SmolLM2),
     cached so later demos reuse it;
  2. stage 3 — GRPO (critic-free): the LoRA policy, the reference (the same weights with the
     adapter disabled) and the reward model (frozen; it re-tokenises the decoded text); each
     opening is continued 4 times and each continuation judged against its group, the KL to
     the reference folded into its reward. ``algorithm=ppo`` runs PPO with the four roles
     instead: the critic reads the policy's tokens, so it starts from the reward model only
     when both share a tokenizer (--quick); otherwise from the policy's weights with a zero
     value head, trained as its own LoRA adapter;
  3. evaluation on held-out openings from the IMDB test split, before and after: share of
     continuations the RM judges positive, mean score, KL to the reference, distinct-2 and
     repetition (reward hacking shows up there first), length;
  4. ``report.html``: curves, before/after samples and a token-level view of rollouts.
``lang=zh`` (``rlhfkit demo --lang zh``, issue 16) runs the same code on other data, models and
words (``LANGUAGES``): Chinese shopping reviews (data/sentiment_zh), the Gemma 3 270M policy of
the optional ``zh`` extra, SnowNLP as an independent judge, the report in Chinese.
Only wiring lives here: settings in demo/settings.py, the stages in demo/stages.py (each calls
its stage's own ``run``); this file runs them and writes the summary and report.
Tests: tests/e2e/test_demo.py (``--quick``), tests/demo/test_pipeline_zh.py (``--lang zh
--quick``); the timed full run is bench/demo.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rlhfkit.demo.judge import judge_fn
from rlhfkit.demo.settings import LANGUAGES, DemoConfig, resolve, stage_name
from rlhfkit.demo.stages import fine_tune_policy, optimise_policy, train_reward_model
from rlhfkit.demo.textstats import distinct_n, mean_repetition


def summarize(rows: list[dict], judge: str = "") -> dict:
    """Before/after numbers from eval rows. Scores are normalised by the RM's mean/std over
    balanced positive/negative reviews, so 'positive' means above that midpoint (> 0). With a
    ``judge`` installed, also the share of continuations it finds positive (P > 0.5), judged
    alone as the RM judges them. Shares and means are over every row; distinct-2 is the mean
    over the draws (``sample`` 0, 1, ...: one continuation per opening each), because over
    more texts it falls on its own: the base policy's 256 continuations (64 openings × 4) score
    0.796 together, their four draws 0.880 on average (docs/grpo.md, t14)."""
    responses = [r["response"] for r in rows]
    n = max(len(rows), 1)
    draws = sorted({r.get("sample", 0) for r in rows}) or [0]
    summary = {"positive_share": sum(r["score"] > 0 for r in rows) / n,
               "score_mean": sum(r["score"] for r in rows) / n,
               "kl_mean": sum(r["kl"] for r in rows) / n,
               "distinct_2": sum(distinct_n([r["response"] for r in rows
                                             if r.get("sample", 0) == k], 2)
                                 for k in draws) / len(draws),
               "repetition": mean_repetition(responses),
               "length_mean": sum(r["length"] for r in rows) / n}
    scores = judge_fn(judge) if judge else None
    if scores is not None:
        summary[f"{judge}_positive_share"] = sum(p > 0.5 for p in scores(responses)) / n
    return summary


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []


def before_after(stage_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = read_jsonl(stage_dir / "eval.jsonl")
    last = max((r["iteration"] for r in rows), default=0)
    return ([r for r in rows if r["iteration"] == 0], [r for r in rows if r["iteration"] == last])


def print_table(before: dict, after: dict) -> list[list]:
    table = [[key, before[key], after[key]] for key in before]
    print(f"\n{'metric':<16}{'before':>10}{'after':>10}")
    for key, b, a in table:
        print(f"{key:<16}{b:>10.3f}{a:>10.3f}")
    return table


def write_report(config: DemoConfig, stage_dir: Path, table: list[list], before_rows,
                 after_rows, seconds: float) -> Path:
    from rlhfkit.demo.report import build_report

    samples = report_samples(before_rows, after_rows)
    metrics = [r for r in read_jsonl(stage_dir / "metrics.jsonl") if r.get("step", 0) > 0]
    rollouts = read_jsonl(stage_dir / "rollouts.jsonl")[-3:]
    name = stage_name(config)
    words = LANGUAGES[config.lang]["words"]
    per_prompt = (words["per_prompt"].format(n=config.num_generations)
                  if config.algorithm == "grpo" else "")
    rows = [[words["metrics"].get(key, key), *values] for key, *values in table]
    page = build_report(
        words["title"].format(stage=name), rows,
        [words["metric"], words["before"].format(stage=name), words["after"].format(stage=name)],
        metrics, samples, rollouts, stage=name, lang=config.lang,
        notes=(words["sft"].format(policy=config.policy, steps=config.sft_steps,
                                   reviews=words["sft_reviews"][config.sft_reviews])
               if config.sft_steps else "") + words["notes"].format(
            policy=config.policy, tuning="LoRA" if config.lora else "full", stage=name,
            backbone=config.reward_backbone, iterations=config.iterations,
            batch=config.batch_size, per_prompt=per_prompt, eval=config.eval_prompts,
            minutes=seconds / 60))
    path = Path(config.output_dir) / "report.html"
    path.write_text(page)
    return path


def report_samples(before_rows: list[dict], after_rows: list[dict], count: int = 8) -> list[dict]:
    """The report's before/after pairs: the first continuation (``sample`` 0) of the first
    ``count`` openings evaluated both times."""
    after_by_prompt = {r["prompt"]: r for r in after_rows if r.get("sample", 0) == 0}
    firsts = [b for b in before_rows
              if b.get("sample", 0) == 0 and b["prompt"] in after_by_prompt]
    return [{"prompt": b["prompt"], "before": b["response"], "before_score": b["score"],
             "after": after_by_prompt[b["prompt"]]["response"],
             "after_score": after_by_prompt[b["prompt"]]["score"]} for b in firsts[:count]]


def run(config: DemoConfig) -> dict:
    config = resolve(config)
    start = time.perf_counter()
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    policy = fine_tune_policy(config)
    sft_seconds = time.perf_counter() - start
    reward_model = train_reward_model(config)
    rm_seconds = time.perf_counter() - start - sft_seconds
    stage_dir = optimise_policy(config, reward_model, policy)
    before_rows, after_rows = before_after(stage_dir)
    judge = LANGUAGES[config.lang]["judge"]
    before, after = summarize(before_rows, judge), summarize(after_rows, judge)
    table = print_table(before, after)
    seconds = time.perf_counter() - start
    report = write_report(config, stage_dir, table, before_rows, after_rows, seconds)
    summary = {"before": before, "after": after, "seconds_total": seconds,
               "seconds_sft": sft_seconds,
               "seconds_reward_model": rm_seconds, "report": str(report)}
    (Path(config.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n[demo] done in {seconds / 60:.1f} min; report: {report}")
    return summary

"""``rlhfkit loop --config examples/loop_<name>.yaml``: iterated online RLHF (issue #14).

Rounds r = 0 … R−1 into ``output_dir/round-<r>/``, each the five steps of
rlhfkit/loop/rounds.py: sample (policy_r) → rank (rlhfkit/loop/annotate.py) → reward model
RM_r on every ranking so far → policy_{r+1} (ppo / grpo / dpo) → compare policy_{r+1} with
policy_r and policy_0 on held-out prompts. After each round: ``metrics.jsonl`` (one row per
round) and ``report.html`` (rlhfkit/loop/report.py). Rerun the same command after a crash or a
stop: every step continues where it was (rounds.py's docstring says how).
Only wiring lives here and in rounds.py: the stages' own ``run`` functions do the training.
Tests: tests/loop/.
"""
from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config import ConfigError, dump_yaml
from rlhfkit.label.schema import Settings
from rlhfkit.label.store import StoreError, init_store, open_store
from rlhfkit.loop import annotate, rounds
from rlhfkit.loop.config import LoopConfig, has_source
from rlhfkit.loop.rounds import COMPARE, SAMPLE, Layout, policy_name, tag

__all__ = ["LoopConfig", "run"]


def open_or_create_store(config: LoopConfig, layout: Layout):
    """The configured store, or <output_dir>/labels.sqlite created on the first run."""
    db = config.store or str(layout.root / "labels.sqlite")
    try:
        if "://" in db or Path(db).expanduser().exists():
            return db, open_store(db)
        order = "uncertainty" if config.selection == "uncertainty" else "random"
        store, admin_token = init_store(db, Settings(order=order))
    except StoreError as err:
        raise ConfigError(f"store: {err}") from None
    if config.annotator == "human":
        print(f"[loop] new label store {db}; admin token (shown once): {admin_token}\n"
              f"[loop] add annotators: rlhfkit label add-annotator --db {db} NAME", flush=True)
    return db, store


def build_judge(config: LoopConfig):
    """The judge's noise-free scores ``score(prompts, responses) -> (B,)``, or None when no
    judge is configured (annotator: human without one)."""
    if not has_source(config.judge.reward):
        return None
    from rlhfkit.online.rewards import build_reward_sources

    sources = build_reward_sources(config.judge.reward, config.model.device)
    return lambda prompts, responses: sources.score(list(prompts), list(responses))[0]


class Annotation:
    """Rank a batch of tasks with the configured annotator (step 2 and step 5)."""

    def __init__(self, config: LoopConfig, store, judge, where: str):
        self.config, self.store, self.judge, self.where = config, store, judge, where
        self.judge_annotator = annotate.annotator_named(store, config.judge.name) \
            if config.annotator == "simulated" else None

    def rank(self, tag_: str) -> None:
        if self.judge_annotator is None:
            annotate.wait_for_people(self.store, tag_, self.config.human.poll_seconds,
                                     self.where)
            return
        judge = self.config.judge
        stored = annotate.judge_queue(self.store, self.judge_annotator, self.judge,
                                      judge.temperature, judge.flip_prob, self.config.seed)
        done, needed = annotate.progress(self.store, tag_)
        print(f"[loop] {tag_}: {judge.name} stored {stored} judgments ({done}/{needed})",
              flush=True)


def compare_step(config: LoopConfig, layout: Layout, store, judge, r: int) -> dict:
    """5b. Scores, KL to round 0, win rates with intervals, the leaderboard (compare.json)."""
    from rlhfkit.label.leaderboard import comparisons_by_judgment, leaderboard
    from rlhfkit.models.scoring import RewardScorer
    from rlhfkit.online.rewards import Prompt
    from rlhfkit.ops.leaderboard import win_rate

    done = layout.round_dir(r) / "compare.json"
    if done.exists():
        return json.loads(done.read_text())
    texts = rounds.compare_texts(store, r)
    new, prev = policy_name(r + 1), policy_name(r)
    scorer = RewardScorer.from_pretrained(layout.reward_model(r), config.model.device)
    score_rm = {name: rounds.mean(scorer.score_messages(*texts[name])) for name in texts}
    score_judge = {name: rounds.mean(float(s) for s in judge(
        [Prompt(m) for m in texts[name][0]], texts[name][1])) for name in texts} if judge else {}
    groups = comparisons_by_judgment(store, tag_prefix=tag(r, COMPARE))
    result = {
        "score_rm": score_rm, "score_judge": score_judge,
        "kl_to_round0": rounds.kl_to(layout.policy(r + 1), layout.policy(0), *texts[new],
                                     config),
        "win_rate_previous": list(win_rate(groups, new, prev, seed=config.seed)),
        "win_rate_round0": list(win_rate(groups, new, policy_name(0), seed=config.seed))
        if r > 0 else None,
        "leaderboard": leaderboard(store, seed=config.seed)}
    done.write_text(json.dumps(result, indent=2))
    return result


def round_row(store, r: int, rm: dict, compare: dict) -> dict:
    """One row of metrics.jsonl and of the report's table."""
    done, _ = annotate.progress(store, tag(r, SAMPLE))
    accuracy = rm["heldout_accuracy"]
    this = accuracy.get(str(r), accuracy.get(r, {})).get("accuracy")
    earlier = [v["accuracy"] for j, v in accuracy.items()
               if int(j) < r and v["accuracy"] is not None]
    new = policy_name(r + 1)
    rate, lo, hi = compare["win_rate_previous"]
    row = {"round": r, "step": r + 1, "labels": done,
           "rm_train_rankings": rm["train_rankings"], "rm_heldout_accuracy": this,
           "rm_heldout_accuracy_earlier": rounds.mean(earlier),
           "rm0_accuracy_on_this_round": rm["rm0_accuracy_on_this_round"],
           # against the judge without noise (None: no judge, or a run from before the key)
           "rm_truth_accuracy": rm.get("truth_accuracy", {}).get("rm"),
           "rm0_truth_accuracy": rm.get("truth_accuracy", {}).get("rm0"),
           "score_rm": compare["score_rm"].get(new),
           "score_rm_previous": compare["score_rm"].get(policy_name(r)),
           "score_judge": compare["score_judge"].get(new),
           "score_judge_previous": compare["score_judge"].get(policy_name(r)),
           "kl_to_round0": compare["kl_to_round0"],
           "win_rate_previous": rate, "win_rate_previous_lo": lo, "win_rate_previous_hi": hi}
    if compare["win_rate_round0"]:
        row.update(zip(("win_rate_round0", "win_rate_round0_lo", "win_rate_round0_hi"),
                       compare["win_rate_round0"]))
    return row


def run_round(config: LoopConfig, layout: Layout, store, pool, judge, annotation: Annotation,
              r: int) -> dict:
    layout.round_dir(r).mkdir(parents=True, exist_ok=True)
    n = rounds.sample_step(config, layout, store, pool, r)
    print(f"[loop] round {r}: 1 sample — {n} tasks of {config.k} candidates from "
          f"{layout.policy(r)} ({tag(r, SAMPLE)})", flush=True)
    annotation.rank(tag(r, SAMPLE))  # 2. rank
    rm = rounds.rm_step(config, layout, store, r, judge)
    print(f"[loop] round {r}: 3 reward model — {rm['train_rankings']} rankings, held-out "
          f"accuracy {rm['heldout_accuracy']}", flush=True)
    rounds.policy_step(config, layout, store, r)
    print(f"[loop] round {r}: 4 {config.algorithm} — {layout.policy(r + 1)}", flush=True)
    reused = rounds.compare_tasks_step(config, layout, store, pool, r)
    if reused:
        print(f"[loop] round {r}: 5 compare — the answers of {', '.join(reused)} as round "
              f"{r - 1} decoded them ({tag(r - 1, COMPARE)})", flush=True)
    annotation.rank(tag(r, COMPARE))
    compare = compare_step(config, layout, store, judge, r)
    row = round_row(store, r, rm, compare)
    print(f"[loop] round {r}: 5 compare — win rate vs {policy_name(r)} "
          f"{row['win_rate_previous']:.2f} [{row['win_rate_previous_lo']:.2f}, "
          f"{row['win_rate_previous_hi']:.2f}]", flush=True)
    return row


def run(config: LoopConfig) -> dict:
    """All rounds (those already done are read back); returns {"rounds": rows, "report"}."""
    from rlhfkit.loop.report import write_report

    layout = Layout(config)
    layout.root.mkdir(parents=True, exist_ok=True)
    (layout.root / "config.yaml").write_text(dump_yaml(config))
    pool = rounds.load_prompts(config)
    rounds.write_jsonl(layout.root / "pool.jsonl", pool.pool)
    db, store = open_or_create_store(config, layout)
    judge = build_judge(config)
    server, where = None, ""
    if config.annotator == "human" and config.human.serve:
        server = annotate.start_server(db, config.human.host, config.human.port)
        where = f" — ranking page http://{config.human.host}:{config.human.port}/"
    rows: list[dict] = []
    try:
        annotation = Annotation(config, store, judge, where)
        for r in range(config.rounds):
            rows.append(run_round(config, layout, store, pool, judge, annotation, r))
            rounds.write_jsonl(layout.root / "metrics.jsonl", rows)
            report = write_report(config, layout, rows, store)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        store.close()
    print(f"[loop] done: {config.rounds} rounds; report: {report}", flush=True)
    return {"rounds": rows, "report": str(report)}

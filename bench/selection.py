"""Label efficiency of the loop's ``selection`` (issue #14, "Which pairs to ask about"): with the
simulated annotator on IMDB, how many labels the reward model needs under ``uncertainty`` or
``ensemble`` to reach the held-out accuracy ``random`` reaches with its full budget (target:
≤ 60%).

    flock /tmp/rlhfkit-heavy.lock python bench/selection.py [--config examples/loop_imdb.yaml]
        [--out runs/selection] [--pool 300] [--heldout 100] [--start 16] [--batch 16]
        [--budget 128] [--seeds 0,1] [--strategies random,uncertainty,ensemble[,oracle_spread,
        oracle_close]]
        [--figure docs/selection_curve.png] [loop-config key=value ...]

Everything is the loop's own code, configured by the loop's YAML (docs/loop.md, "Which pairs to
ask about: measured"):
- pool: ``--pool`` + ``--heldout`` prompts of the loop's pool (``rounds.load_prompts``), ``k``
  continuations each from the round-0 policy (``rounds.sample_texts``, round 0's seed),
  identical texts kept once (``label.sources.distinct``), scored once by the judge
  (``pipeline.build_judge``: loop_imdb's IMDB reward model, model_input text, normalised). Those
  noise-free scores are the hidden truth; the pool is cached in <out>/pool.jsonl.
- labels: the simulated annotator's noisy ranking of a task (``annotate.simulated_ranks``, the
  noise ``judge_queue`` applies: Bradley–Terry at judge.temperature, judge.flip_prob, seeded by
  (seed, task id)), as ranked rows (``label.export.ranked_rows``).
- rounds: round 0 labels ``--start`` tasks picked at random (``rounds.select_tasks``: round 0 has
  no reward model), then each round picks ``--batch`` more with the strategy
  (``rounds.select_tasks`` with ``selection`` set: uncertainty = smallest gap between the
  previous round's RM scores of a task's candidates; ensemble = largest disagreement of
  ensemble_size bootstrap heads on the previous round's RM, fitted on the labels it was trained
  on, ``loop/selection.py``; or, bench only, an oracle reading the hidden truth: ``ORACLES``),
  up to ``--budget``; after each round the
  ``rm`` stage trains on every label so far (``loop.config.stage_config`` of the loop's rm
  section, warm-started from the previous round's RM when rm_init is warm, ``rounds.run_stage``).
- accuracy: ``rounds.pair_accuracy`` on the ``--heldout`` tasks ranked by the hidden truth
  without noise (every strictly ordered pair of their candidates).
Round 0 is the same for every strategy (same seed, same picks, same training): it is trained
once per seed and linked. Each round's result is kept (<out>/seed-<s>/<strategy>/round-<r>/
result.json), so a rerun continues where it stopped; <out>/settings.json records the annotator,
rm section and schedule they were measured with, and a rerun with others is refused. The
figure (matplotlib, Agg): accuracy against labels per strategy, the mean over seeds in bold.
Tests: tests/loop/test_selection_bench.py (the pieces on tiny models, through ``main``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- pool
def pool_key(config, size: int) -> dict:
    """What a cached pool was built from: a different key rebuilds it. sample_batch_size is
    part of it: passes of 64 rows draw other continuations than passes of 16."""
    from rlhfkit.config import to_dict

    return {"policy": config.model.name, "k": config.k, "size": size, "seed": config.seed,
            "train_path": config.data.train_path, "template": config.data.template,
            "max_prompt_length": config.data.max_prompt_length,
            "rollout": to_dict(config.rollout), "sample_batch_size": config.sample_batch_size,
            "judge": to_dict(config.judge.reward)}


def check_settings(config, args, path: Path) -> None:
    """The rounds kept under ``--out`` (result.json per round, read back on a rerun) were
    measured under the settings in ``path``: another annotator, rm section or schedule would mix
    two measurements, so it is refused (a longer ``--budget``, more seeds or strategies
    continue). Written on the first run."""
    from rlhfkit.config import ConfigError

    settings = {"pool": pool_key(config, args.pool + args.heldout), "heldout": args.heldout,
                "start": args.start, "batch": args.batch,
                "judge": {"temperature": config.judge.temperature,
                          "flip_prob": config.judge.flip_prob},
                "rm": config.rm, "rm_init": config.rm_init,
                "ensemble": {"size": config.ensemble_size, "l2": config.ensemble_l2}}
    settings = json.loads(json.dumps(settings))  # as read back
    if path.exists():
        kept = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | kept.keys()
                         if settings.get(k) != kept.get(k))
        if changed:
            raise ConfigError(f"--out {path.parent}: its rounds were measured with other "
                              f"{', '.join(changed)} ({path}); expected the same settings, or "
                              f"another --out")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def build_pool(config, size: int, path: Path) -> list[dict]:
    """``size`` prompts × ``config.k`` continuations of the round-0 policy with the judge's
    noise-free scores → rows {"messages", "prompt", "texts", "truth"}; prompts left with fewer
    than two distinct continuations are dropped (the loop makes no task of them either)."""
    from rlhfkit.label.sources import distinct
    from rlhfkit.loop import pipeline, rounds
    from rlhfkit.online.rewards import conversation_text

    key = pool_key(config, size)
    if path.exists():
        lines = path.read_text().splitlines()
        if lines and json.loads(lines[0]) == {"pool": key}:
            return [json.loads(line) for line in lines[1:]]
    messages = rounds.load_prompts(config).pool_messages[:size]
    samples = rounds.sample_texts(config, config.model.name, messages, config.k,
                                  config.seed * 1000)  # round 0's sampling seed
    rows = []
    for m, texts in zip(messages, samples):
        kept = distinct(texts, [""] * len(texts), [{}] * len(texts))[0]
        if len(kept) >= 2:
            rows.append({"messages": [list(turn) for turn in m], "prompt": conversation_text(m),
                         "texts": kept})
    judge = pipeline.build_judge(config)
    flat = judge([row["prompt"] for row in rows for _ in row["texts"]],
                 [text for row in rows for text in row["texts"]])  # as judge_queue asks it
    start = 0
    for row in rows:
        row["truth"] = [float(s) for s in flat[start:start + len(row["texts"])]]
        start += len(row["texts"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n"
                            for line in [{"pool": key}] + rows))
    return rows


def messages_of(row: dict) -> tuple:
    return tuple(tuple(turn) for turn in row["messages"])


# ----------------------------------------------------------------------------- labels
def ranked(row: dict, task_id: int, ranks: list[int]) -> dict:
    """A task with its ranks → the ranked row the rm stage reads (``label.export.ranked_rows``)."""
    from rlhfkit.label.export import ranked_rows

    return ranked_rows([{"task_id": task_id, "prompt": row["prompt"], "texts": row["texts"],
                         "ranks": ranks, "judgments": 1}])[0]


def labelled(row: dict, task_id: int, judge) -> dict:
    """The simulated annotator's ranking of a pool task (``annotate.simulated_ranks``)."""
    from rlhfkit.loop.annotate import simulated_ranks

    return ranked(row, task_id, simulated_ranks(row["truth"], judge.temperature,
                                                judge.flip_prob, judge.seed, task_id))


def truth_row(row: dict, task_id: int) -> dict:
    """A held-out task ranked by the hidden truth: the judge's scores without noise."""
    from rlhfkit.loop.annotate import truth_ranks

    return ranked(row, task_id, truth_ranks(row["truth"], task_id))


# ----------------------------------------------------------------------------- one strategy
def schedule(start: int, batch: int, budget: int) -> list[int]:
    """Labels after each round: start, start + batch, …, budget (the last batch may be short)."""
    from rlhfkit.config import ConfigError

    if not 0 < start <= budget or batch < 1:
        raise ConfigError(f"expected 0 < --start ({start}) ≤ --budget ({budget}) and --batch ≥ 1")
    out = [start]
    while out[-1] < budget:
        out.append(min(out[-1] + batch, budget))
    return out


class Judge:
    """The annotator's noise settings under one seed (the loop's judge part, config.seed)."""

    def __init__(self, config):
        self.temperature, self.flip_prob = config.judge.temperature, config.judge.flip_prob
        self.seed = config.seed


# Bench-only strategies that read the hidden truth (no loop can): upper bounds on what any
# selection of these tasks could save. oracle_spread: largest mean true gap between a task's
# candidates first (the labels the annotator's noise spoils least); oracle_close: smallest first
# (what the score gap tries to find, known exactly: the pairs the truth can hardly tell apart).
ORACLES = {"oracle_spread": -1.0, "oracle_close": 1.0}


def mean_true_gap(truth: list[float]) -> float:
    """Mean |t_i − t_j| over a task's candidate pairs."""
    from itertools import combinations

    gaps = [abs(a - b) for a, b in combinations(truth, 2)]
    return sum(gaps) / len(gaps)


def oracle_picks(pool: list[dict], remaining: list[int], n: int, strategy: str) -> list[int]:
    """The n remaining pool indices an oracle picks (ties by index)."""
    sign = ORACLES[strategy]
    return sorted(sorted(remaining, key=lambda i: (sign * mean_true_gap(pool[i]["truth"]), i))[:n])


def run_strategy(config, pool: list[dict], heldout: list[dict], strategy: str, seed: int,
                 budgets: list[int], out: Path) -> list[dict]:
    """Rounds of pick → label → rm for one strategy and seed → one result per round:
    {"labels", "accuracy", "pairs", "picks", "seconds"}."""
    from rlhfkit.loop import rounds
    from rlhfkit.loop.config import stage_config

    config = replace(config, seed=seed, selection="random" if strategy in ORACLES else strategy,
                     output_dir=str(out))
    layout, judge = rounds.Layout(config), Judge(config)
    shared = out.parent / "round-0"  # round 0 is random for every strategy: trained once
    out.mkdir(parents=True, exist_ok=True)
    if not layout.round_dir(0).exists():
        shared.mkdir(parents=True, exist_ok=True)
        layout.round_dir(0).symlink_to(Path("..") / "round-0", target_is_directory=True)
    results: list[dict] = []
    picked: list[int] = []  # pool indices, in the order they were labelled
    for r, labels in enumerate(budgets):
        done = layout.round_dir(r) / "result.json"
        if done.exists():
            results.append(json.loads(done.read_text()))
            picked += results[-1]["picks"]
            continue
        began = time.perf_counter()
        taken = set(picked)
        remaining = [i for i in range(len(pool)) if i not in taken]
        n = labels - len(picked)
        # n picks this round, round 0 too: the file's first_round_labels (loop_imdb: 192) is the
        # loop's round 0, not this schedule's --start
        round_config = replace(config, labels_per_round=n, first_round_labels=0,
                               prompts_per_round=max(n, config.prompts_per_round))
        if strategy in ORACLES and r > 0:
            picks = oracle_picks(pool, remaining, n, strategy)
        else:
            chosen, _ = rounds.select_tasks(round_config, layout, r,
                                            [messages_of(pool[i]) for i in remaining],
                                            [pool[i]["texts"] for i in remaining])
            picks = [remaining[j] for j in chosen]
        picked += picks
        train_path = layout.rm_train_path(r)  # where selection: ensemble reads RM_r's labels
        rounds.write_jsonl(train_path, [labelled(pool[i], i + 1, judge) for i in picked])
        warm = str(layout.reward_model(r - 1)) if config.rm_init == "warm" and r > 0 else ""
        rounds.run_stage("rm", stage_config(config, "rm", str(layout.round_dir(r) / "rm"), warm,
                                            str(train_path), ""))
        accuracy, pairs = rounds.pair_accuracy(
            rounds.reward_scorer(layout.reward_model(r), config.model.device), heldout)
        result = {"strategy": strategy if r else "random", "seed": seed, "round": r,
                  "labels": len(picked), "accuracy": accuracy, "pairs": pairs, "picks": picks,
                  "seconds": round(time.perf_counter() - began, 1)}
        done.write_text(json.dumps(result) + "\n")
        for checkpoint in (layout.round_dir(r) / "rm").glob("checkpoint-*"):  # final/ is kept
            shutil.rmtree(checkpoint)
        print(f"[selection] seed {seed} {strategy}: {result['labels']} labels → accuracy "
              f"{accuracy:.4f} on {pairs} pairs ({result['seconds']} s)", flush=True)
        results.append(result)
    return results


def label_quality(pool: list[dict], picks: list[tuple[int, int]], judge) -> dict:
    """How the tasks a strategy picked get labelled, over their candidate pairs whose true
    scores differ: the mean true gap, the annotator's expected agreement with the truth
    (``ops.noise.preference_probability``) and the share of pairs its labels got right.
    ``picks``: (pool index, seed) — the labels are drawn as ``labelled`` draws them."""
    from itertools import combinations

    from rlhfkit.loop.annotate import simulated_ranks
    from rlhfkit.ops.noise import preference_probability

    gaps, expected, right = [], [], []
    for i, seed in picks:
        truth = pool[i]["truth"]
        ranks = simulated_ranks(truth, judge.temperature, judge.flip_prob, seed, i + 1)
        for a, b in combinations(range(len(truth)), 2):
            if truth[a] != truth[b]:
                best, worst = (a, b) if truth[a] > truth[b] else (b, a)
                gaps.append(truth[best] - truth[worst])
                right.append(ranks[best] < ranks[worst])
    expected = preference_probability(gaps, judge.temperature, judge.flip_prob).tolist() \
        if gaps else []
    n = len(gaps)
    return {"tasks": len(picks), "pairs": n,
            "mean_gap": sum(gaps) / n if n else None,
            "expected_agreement": sum(expected) / n if n else None,
            "agreement": sum(right) / n if n else None}


# ----------------------------------------------------------------------------- the figure
def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The fewest labels at which a curve [(labels, accuracy), …] reaches ``target`` (None:
    never, within its budget)."""
    reached = [labels for labels, accuracy in curve if accuracy >= target]
    return min(reached) if reached else None


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean accuracy over seeds at each budget (curves measured at the same budgets)."""
    return [(points[0][0], sum(acc for _, acc in points) / len(points))
            for points in zip(*curves)]


def summarize(curves: dict[str, dict[int, list[tuple[int, float]]]], budget: int) -> dict:
    """Per strategy: its mean curve; the target = random's mean accuracy at the full budget;
    labels each strategy needs to reach it (mean curve, and per seed against that seed's own
    random run), as a share of the budget."""
    means = {strategy: mean_curve(list(by_seed.values())) for strategy, by_seed in curves.items()}
    target = dict(means["random"])[budget]
    out = {"budget": budget, "target": target, "mean": means, "needed": {}, "per_seed": {}}
    for strategy, by_seed in curves.items():
        needed = labels_to_reach(means[strategy], target)
        out["needed"][strategy] = {"labels": needed,
                                   "share": None if needed is None else needed / budget}
        out["per_seed"][strategy] = {
            seed: labels_to_reach(curve, dict(curves["random"][seed])[budget])
            for seed, curve in by_seed.items()}
    return out


def table(curves: dict, summary: dict) -> str:
    strategies = list(curves)
    seeds = sorted(next(iter(curves.values())))
    head = ["labels"] + [f"{s} (mean)" for s in strategies] + \
        [f"{s} s{seed}" for s in strategies for seed in seeds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, (labels, _) in enumerate(summary["mean"][strategies[0]]):
        cells = [str(labels)] + [f"{summary['mean'][s][b][1]:.4f}" for s in strategies] + \
            [f"{curves[s][seed][b][1]:.4f}" for s in strategies for seed in seeds]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\ntarget (random's mean accuracy at {summary['budget']} labels): "
                 f"{summary['target']:.4f}")
    for s in strategies:
        needed = summary["needed"][s]
        share = "not reached" if needed["labels"] is None else \
            f"{needed['labels']} labels = {needed['share']:.0%} of random's"
        lines.append(f"{s}: {share}; per seed (vs that seed's random): {summary['per_seed'][s]}")
    return "\n".join(lines)


def plot(curves: dict, summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"random": "tab:blue", "uncertainty": "tab:orange", "ensemble": "tab:green"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for strategy, by_seed in curves.items():
        colour = colours.get(strategy)
        for curve in by_seed.values():
            ax.plot(*zip(*curve), color=colour, alpha=0.3, linewidth=1)
        ax.plot(*zip(*summary["mean"][strategy]), color=colour, linewidth=2.2, marker="o",
                label=f"{strategy} (mean of {len(by_seed)} seeds)")
    ax.axhline(summary["target"], color="grey", linestyle="--", linewidth=1,
               label=f"random at {summary['budget']} labels: {summary['target']:.3f}")
    ax.axvline(0.6 * summary["budget"], color="grey", linestyle=":", linewidth=1,
               label="60% of random's labels")
    ax.set_xlabel("labels (tasks ranked by the simulated annotator)")
    ax.set_ylabel("RM pairwise accuracy vs hidden truth")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples/loop_imdb.yaml"))
    parser.add_argument("--out", default="runs/selection", help="pool cache and every round")
    parser.add_argument("--pool", type=int, default=300, help="candidate tasks to pick from")
    parser.add_argument("--heldout", type=int, default=100, help="tasks RM accuracy is "
                        "measured on (ranked by the hidden truth, never labelled)")
    parser.add_argument("--start", type=int, default=16, help="round 0's random labels")
    parser.add_argument("--batch", type=int, default=16, help="labels picked per round")
    parser.add_argument("--budget", type=int, default=128, help="random's full budget")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--strategies", default="random,uncertainty,ensemble")
    parser.add_argument("--figure", default="", help="PNG of the curves ('' = none)")
    parser.add_argument("overrides", nargs="*", help="loop config key=value, e.g. "
                        "rm.train.max_steps=20")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from rlhfkit.config import ConfigError, load_config
    from rlhfkit.loop.config import LoopConfig

    args = parse_args(argv)
    config = load_config(LoopConfig, args.config, args.overrides)
    strategies = args.strategies.split(",")
    if strategies[0] != "random":
        raise ConfigError("--strategies: expected random first (the target is its accuracy)")
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = schedule(args.start, args.batch, args.budget)
    out = Path(args.out)
    check_settings(config, args, out / "settings.json")
    began = time.perf_counter()
    rows = build_pool(config, args.pool + args.heldout, out / "pool.jsonl")
    if len(rows) <= args.heldout or len(rows) - args.heldout < args.budget:
        raise ConfigError(f"the pool has {len(rows)} tasks: fewer than --heldout "
                         f"({args.heldout}) + --budget ({args.budget})")
    pool, held = rows[:-args.heldout], rows[-args.heldout:]
    heldout = [truth_row(row, len(pool) + b + 1) for b, row in enumerate(held)]
    print(f"[selection] pool: {len(pool)} tasks, held out: {len(heldout)} "
          f"({time.perf_counter() - began:.0f} s)", flush=True)
    curves: dict = {}
    chosen: dict = {}  # strategy → [(pool index, seed)] it picked after round 0
    for seed in seeds:
        for strategy in strategies:
            results = run_strategy(config, pool, heldout, strategy, seed, budgets,
                                   out / f"seed-{seed}" / strategy)
            curves.setdefault(strategy, {})[seed] = [(r["labels"], r["accuracy"])
                                                     for r in results]
            chosen.setdefault(strategy, []).extend(
                (i, seed) for r in results[1:] for i in r["picks"])
    summary = summarize(curves, budgets[-1])
    quality = {strategy: label_quality(pool, picks, config.judge)
               for strategy, picks in chosen.items()}
    print(table(curves, summary), flush=True)
    for strategy, q in quality.items():
        if q["pairs"]:
            print(f"{strategy}'s picks after round 0: {q['tasks']} tasks, {q['pairs']} pairs, "
                  f"mean true gap {q['mean_gap']:.3f}, the annotator agrees with the truth on "
                  f"{q['agreement']:.1%} (expected {q['expected_agreement']:.1%})", flush=True)
    result = {"curves": {s: {str(seed): c for seed, c in by.items()} for s, by in curves.items()},
              **{k: v for k, v in summary.items() if k != "per_seed"},
              "per_seed": {s: {str(k): v for k, v in by.items()}
                           for s, by in summary["per_seed"].items()},
              "label_quality": quality,
              "pool": len(pool), "heldout": len(heldout), "budgets": budgets,
              "config": args.config, "overrides": args.overrides,
              "seconds": round(time.perf_counter() - began, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.figure:
        plot(curves, summary, Path(args.figure),
             f"{Path(args.config).name}: pool {len(pool)}, held out {len(heldout)}, "
             f"batch {args.batch}, seeds {args.seeds}")
    return result


if __name__ == "__main__":
    from rlhfkit.config import ConfigError
    from rlhfkit.data import DataError

    try:
        main()
    except (ConfigError, DataError) as err:
        print(f"bench/selection.py: {err}", file=sys.stderr)
        sys.exit(2)

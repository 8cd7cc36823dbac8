"""bench/selection.py (the label-efficiency measurement of ``selection``, docs/loop.md) kept
from breaking silently: its pure pieces by hand, and ``main`` end to end on the tiny loop
(tiny-llama policy and reward model, the compressibility judge) — pool cached, round 0 shared
by every strategy (random, uncertainty, ensemble), labels exactly the simulated annotator's,
a rerun continues."""
import json
from pathlib import Path

import bench_selection as bench  # bench/selection.py (tests/conftest.py: BenchModules)
import pytest

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("random", "uncertainty", "ensemble", "oracle_spread")  # the default + an oracle


def test_simulated_ranks_is_the_noise_model_seeded_by_task():
    """No noise → the judge's order (competition ranks, ties shared); flip 1 → reversed; the
    same (seed, task id) → the same draw, another task id → its own."""
    from rlhfkit.loop.annotate import simulated_ranks

    assert simulated_ranks([0.3, 2.0, -1.0, 0.3], 0.0, 0.0, 0, 7) == [2, 1, 4, 2]
    assert simulated_ranks([0.3, 2.0, -1.0], 0.0, 1.0, 0, 7) == [2, 3, 1]
    scores = [0.1, 0.2, 0.3, 0.4]
    draws = {tuple(simulated_ranks(scores, 5.0, 0.0, 3, task)) for task in range(40)}
    assert simulated_ranks(scores, 5.0, 0.0, 3, 11) == simulated_ranks(scores, 5.0, 0.0, 3, 11)
    assert len(draws) > 5  # T = 5 on gaps of 0.1: nearly uniform orders


def test_truth_ranks_is_the_judges_order_without_noise():
    """The hidden truth: competition ranks of the scores (ties shared), whatever the task id."""
    from rlhfkit.loop.annotate import truth_ranks

    assert truth_ranks([0.3, 2.0, -1.0, 0.3], 7) == [2, 1, 4, 2]
    assert truth_ranks([0.1, 0.2, 0.3], 11) == truth_ranks([0.1, 0.2, 0.3], 12) == [3, 2, 1]


def test_schedule_and_labels_to_reach_by_hand():
    assert bench.schedule(16, 16, 64) == [16, 32, 48, 64]
    assert bench.schedule(10, 16, 40) == [10, 26, 40]  # the last batch is short
    with pytest.raises(ValueError, match="--start"):
        bench.schedule(0, 16, 64)
    curve = [(16, 0.60), (32, 0.70), (48, 0.68), (64, 0.72)]
    assert bench.labels_to_reach(curve, 0.70) == 32
    assert bench.labels_to_reach(curve, 0.72) == 64
    assert bench.labels_to_reach(curve, 0.73) is None
    # mean over two seeds: (0.6+0.8)/2 = 0.7 at 16, (0.7+0.9)/2 = 0.8 at 32
    assert bench.mean_curve([[(16, 0.6), (32, 0.7)], [(16, 0.8), (32, 0.9)]]) == \
        [(16, pytest.approx(0.7)), (32, pytest.approx(0.8))]


def test_label_quality_by_hand():
    """Truth (1, 0, 1): the pairs whose true scores differ are (0, 1) and (1, 2), gap 1 each.
    No noise: every label right, expected agreement 1; flip 1: every label wrong, expected 0;
    T = 1, no flips: expected σ(1) = 0.7311 per pair."""
    from types import SimpleNamespace

    pool = [{"truth": [1.0, 0.0, 1.0]}]
    clean = bench.label_quality(pool, [(0, 0)], SimpleNamespace(temperature=0.0, flip_prob=0.0))
    assert clean == {"tasks": 1, "pairs": 2, "mean_gap": 1.0, "expected_agreement": 1.0,
                     "agreement": 1.0}
    flipped = bench.label_quality(pool, [(0, 0)], SimpleNamespace(temperature=0.0,
                                                                  flip_prob=1.0))
    assert flipped["agreement"] == 0.0 and flipped["expected_agreement"] == 0.0
    noisy = bench.label_quality(pool, [(0, 0)], SimpleNamespace(temperature=1.0, flip_prob=0.0))
    assert noisy["expected_agreement"] == pytest.approx(0.7310585786, abs=1e-9)
    none = bench.label_quality(pool, [], SimpleNamespace(temperature=0.0, flip_prob=0.0))
    assert none == {"tasks": 0, "pairs": 0, "mean_gap": None, "expected_agreement": None,
                    "agreement": None}


def test_oracles_pick_by_the_mean_true_gap_by_hand():
    """Mean |t_i − t_j|: (0, 1, 3) → (1 + 3 + 2)/3 = 2; (0, 0.5) → 0.5; (2, 2, 3) → 2/3.
    oracle_spread takes the widest first, oracle_close the narrowest; ties by index; picks
    come back sorted, from the remaining indices only."""
    pool = [{"truth": [0.0, 1.0, 3.0]}, {"truth": [0.0, 0.5]}, {"truth": [2.0, 2.0, 3.0]},
            {"truth": [1.0, 1.5]}]
    assert bench.mean_true_gap(pool[0]["truth"]) == pytest.approx(2.0)
    assert bench.mean_true_gap(pool[2]["truth"]) == pytest.approx(2 / 3)
    assert bench.oracle_picks(pool, [0, 1, 2, 3], 2, "oracle_spread") == [0, 2]
    assert bench.oracle_picks(pool, [0, 1, 2, 3], 2, "oracle_close") == [1, 3]
    assert bench.oracle_picks(pool, [1, 2, 3], 1, "oracle_spread") == [2]


def test_summarize_target_is_randoms_full_budget_mean():
    """target = random's mean at the budget (0.7 + 0.8)/2 = 0.75; uncertainty's mean curve
    (0.7, 0.76) reaches it at 16 labels = 50% of 32; per seed, against that seed's random:
    seed 0 (target 0.7) at 16, seed 1 (target 0.8) never."""
    curves = {"random": {0: [(16, 0.6), (32, 0.7)], 1: [(16, 0.6), (32, 0.8)]},
              "uncertainty": {0: [(16, 0.72), (32, 0.74)], 1: [(16, 0.68), (32, 0.78)]}}
    summary = bench.summarize(curves, 32)
    assert summary["target"] == pytest.approx(0.75)
    assert summary["needed"]["uncertainty"] == {"labels": 32, "share": 1.0}
    assert summary["needed"]["random"] == {"labels": 32, "share": 1.0}
    assert summary["per_seed"]["uncertainty"] == {0: 16, 1: None}
    curves["uncertainty"][1] = [(16, 0.80), (32, 0.78)]  # mean (0.76, 0.76) → 16 labels
    assert bench.summarize(curves, 32)["needed"]["uncertainty"] == {"labels": 16, "share": 0.5}


def test_main_on_the_tiny_loop(tmp_path):
    from rlhfkit.config import load_config
    from rlhfkit.loop.annotate import simulated_ranks
    from rlhfkit.loop.config import LoopConfig

    out = tmp_path / "selection"
    argv = ["--config", str(ROOT / "examples/loop_tiny.yaml"), "--out", str(out),
            "--pool", "10", "--heldout", "4", "--start", "3", "--batch", "2", "--budget", "5",
            "--seeds", "0", "--strategies", ",".join(STRATEGIES),
            "--figure", str(tmp_path / "curve.png"),
            f"data.train_path={ROOT / 'data/tiny/prompts.jsonl'}", "rm.train.max_steps=2",
            "first_round_labels=6"]  # the loop's round 0 (loop_imdb: 192); --start is the bench's
    result = bench.main(argv)
    assert result["budgets"] == [3, 5] and result["heldout"] == 4
    for strategy in STRATEGIES:
        curve = result["curves"][strategy]["0"]
        assert [labels for labels, _ in curve] == [3, 5]
        assert all(0 <= accuracy <= 1 for _, accuracy in curve)
    for strategy in STRATEGIES[1:]:  # round 0 is random for every strategy: one training
        assert result["curves"][strategy]["0"][0] == result["curves"]["random"]["0"][0]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    for strategy in STRATEGIES:  # the 2 tasks each picked in round 1
        assert result["label_quality"][strategy]["tasks"] == 2
        assert 0 <= result["label_quality"][strategy]["agreement"] <= 1

    seed_dir = out / "seed-0"
    for strategy in STRATEGIES[1:]:
        assert (seed_dir / strategy / "round-0").resolve() == (seed_dir / "round-0").resolve()
    pool = [json.loads(line) for line in (out / "pool.jsonl").read_text().splitlines()[1:]]
    config = load_config(LoopConfig, str(ROOT / "examples/loop_tiny.yaml"))
    for strategy in STRATEGIES:
        picks = [json.loads((seed_dir / strategy / f"round-{r}/result.json").read_text())["picks"]
                 for r in (0, 1)]
        assert len(picks[0]) == 3 and len(picks[1]) == 2 and not set(picks[0]) & set(picks[1])
        rows = [json.loads(line) for line in
                (seed_dir / strategy / "round-1/rm_data/train.jsonl").read_text().splitlines()]
        for i, row in zip(picks[0] + picks[1], rows):  # the annotator's noisy ranking of task i+1
            ranks = simulated_ranks(pool[i]["truth"], config.judge.temperature,
                                    config.judge.flip_prob, 0, i + 1)
            assert row["responses"] == [pool[i]["texts"][s] for s in
                                        sorted(range(len(ranks)), key=lambda s: (ranks[s], s))]
    mtime = (out / "pool.jsonl").stat().st_mtime_ns
    again = bench.main(argv)  # every round done: read back, nothing rebuilt or retrained
    assert again["curves"] == result["curves"]
    assert (out / "pool.jsonl").stat().st_mtime_ns == mtime
    # the kept rounds were labelled at the file's temperature: another one is refused before
    # anything is read back or rebuilt, and says which setting differs
    with pytest.raises(ValueError, match=r"--out .*other judge"):
        bench.main(argv + ["judge.temperature=0.7"])
    assert (out / "pool.jsonl").stat().st_mtime_ns == mtime


def test_pool_key_names_the_decode_passes():
    """A pool sampled in passes of 64 rows holds other continuations than one sampled in passes
    of 16: its cache key differs, so the cached pool is rebuilt."""
    from dataclasses import replace

    from rlhfkit.config import load_config
    from rlhfkit.loop.config import LoopConfig

    config = load_config(LoopConfig, str(ROOT / "examples/loop_tiny.yaml"))
    key = bench.pool_key(config, 10)
    assert key["sample_batch_size"] == config.sample_batch_size
    assert bench.pool_key(replace(config, sample_batch_size=config.sample_batch_size + 1), 10) \
        != key
    assert bench.pool_key(replace(config, judge=replace(config.judge, temperature=0.9)), 10) \
        == key  # the noise-free truth does not depend on the annotator's noise

"""``rlhfkit loop`` on the tiny example: two rounds end to end in under a minute, the store holds
each round's tasks and the judge's judgments exactly once, ``kill -9`` mid-round and a rerun
lose nothing and do nothing twice, and ``selection: uncertainty`` ranks the smallest score gaps."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from sqlalchemy import func, select

from rlhfkit.label.schema import annotators, judgments, tasks
from rlhfkit.label.store import open_store

TAGS = ["round-0/sample", "round-0/compare", "round-1/sample", "round-1/compare"]


def per_tag(db) -> dict:
    """tag → (tasks, judgments, distinct (task, annotator) pairs, annotator names)."""
    store = open_store(str(db))
    try:
        with store.engine.connect() as conn:
            n_tasks = dict(conn.execute(select(tasks.c.tag, func.count())
                                        .group_by(tasks.c.tag)).all())
            rows = conn.execute(select(tasks.c.tag, judgments.c.task_id, annotators.c.name)
                                .select_from(judgments)
                                .join(tasks, tasks.c.id == judgments.c.task_id)
                                .join(annotators, annotators.c.id == judgments.c.annotator_id)
                                ).all()
    finally:
        store.close()
    out = {}
    for tag_, count in n_tasks.items():
        mine = [r for r in rows if r.tag == tag_]
        out[tag_] = (count, len(mine), len({(r.task_id, r.name) for r in mine}),
                     sorted({r.name for r in mine}))
    return out


def test_tiny_loop_runs_in_under_a_minute(tiny_loop):
    output_dir, seconds, result = tiny_loop
    assert seconds < 60, seconds
    rows = result.history
    assert [row["round"] for row in rows] == [0, 1] and result.metrics == rows[-1]
    for row in rows:
        assert row["labels"] > 0
        assert 0 <= row["rm_heldout_accuracy"] <= 1
        assert row["win_rate_previous_lo"] <= row["win_rate_previous"] <= \
            row["win_rate_previous_hi"]
        assert row["kl_to_round0"] == row["kl_to_round0"]  # finite, measured
        assert row["score_judge"] is not None and row["score_rm"] is not None
    assert rows[0]["kl_to_round0"] != 0  # policy_1 differs from policy_0
    assert "win_rate_round0" in rows[1] and "win_rate_round0" not in rows[0]
    assert rows[1]["rm_heldout_accuracy_earlier"] is not None  # RM_1 on round 0's held-out
    for r in (0, 1):
        assert (output_dir / f"round-{r}/policy/final/config.json").exists()
        assert (output_dir / f"round-{r}/rm/final/reward_stats.json").exists()
        compare = json.loads((output_dir / f"round-{r}/compare.json").read_text())
        assert {b["model"] for b in compare["leaderboard"]} == \
            {f"policy_{i}" for i in range(r + 2)}
    # round 1's reward model trained on both rounds' rankings (warm start from RM_0)
    rm = [json.loads((output_dir / f"round-{r}/rm.json").read_text()) for r in (0, 1)]
    assert rm[1]["train_rankings"] > rm[0]["train_rankings"]
    # round 1's policy step at round 0's learning rate × later_lr_scale (0.5 in the example)
    lr = [yaml.safe_load((output_dir / f"round-{r}/policy/config.yaml").read_text())["train"]
          ["learning_rate"] for r in (0, 1)]
    assert lr[1] == pytest.approx(0.5 * lr[0]) and lr[0] > 0
    rm_config = (output_dir / "round-1/rm/config.yaml").read_text()
    assert str(output_dir / "round-0/rm/final") in rm_config
    page = (output_dir / "report.html").read_text()
    assert page.count("<tr>") >= 3 and "Curves over rounds" in page and "policy_2" in page


def test_truth_rows_rerank_by_the_judge_without_noise():
    """A judge that scores a text by its length ranks ("ccc", "bb", "a") 1, 2, 3, whatever
    order the noisy labels gave; every other key of the row is kept."""
    from rlhfkit.loop.rounds import truth_rows

    rows = [{"prompt": "p", "responses": ["a", "bb", "ccc"], "ranks": [1, 2, 3], "task_id": 7,
             "judgments": 1}]
    seen = []

    def judge(prompts, responses):
        seen.append((prompts, responses))
        return [float(len(t)) for t in responses]

    assert truth_rows(rows, judge) == [{**rows[0], "ranks": [3, 2, 1]}]
    assert seen == [(["p", "p", "p"], ["a", "bb", "ccc"])]
    assert truth_rows([], judge) == []


def test_reward_models_are_measured_against_the_judge_without_noise(tiny_loop, tiny_example):
    """rm.json's truth_accuracy: RM_r and RM_0 on the round's held-out rankings re-ranked by the
    judge's noise-free scores — recomputed here from heldout-<r>.jsonl; in round 0 RM_0 is RM_r;
    metrics.jsonl and the report carry them."""
    from rlhfkit.config import load_config
    from rlhfkit.loop import pipeline, rounds
    from rlhfkit.loop.config import LoopConfig

    output_dir, _, result = tiny_loop
    example, overrides = tiny_example
    config = load_config(LoopConfig, str(example), overrides(output_dir))
    layout, judge = rounds.Layout(config), pipeline.build_judge(config)
    relabelled = []
    for r in (0, 1):
        stored = json.loads((output_dir / f"round-{r}/rm.json").read_text())["truth_accuracy"]
        heldout = [json.loads(line) for line in
                   (output_dir / f"round-{r}/rm_data/heldout-{r}.jsonl").read_text().splitlines()]
        truth = rounds.truth_rows(heldout, judge)
        relabelled += [a["ranks"] != b["ranks"] for a, b in zip(truth, heldout)]
        assert stored["rm"] == pytest.approx(
            rounds.pair_accuracy(rounds.reward_scorer(layout.reward_model(r), "cpu"), truth)[0])
        assert stored["rm0"] == pytest.approx(
            rounds.pair_accuracy(rounds.reward_scorer(layout.reward_model(0), "cpu"), truth)[0])
        assert stored["pairs"] > 0
        row = result.history[r]
        assert (row["rm_truth_accuracy"], row["rm0_truth_accuracy"]) == (stored["rm"],
                                                                          stored["rm0"])
    assert any(relabelled)  # the annotator's noise reordered some: the truth is another measure
    assert "RM_r / RM_0 acc. by the judge" in (output_dir / "report.html").read_text()


def test_store_holds_each_task_and_judgment_once(tiny_loop):
    output_dir, _, _ = tiny_loop
    counts = per_tag(output_dir / "labels.sqlite")
    assert sorted(counts) == sorted(TAGS)
    for tag_, (n_tasks, n_judgments, distinct, names) in counts.items():
        assert n_judgments == n_tasks == distinct, (tag_, counts[tag_])  # each judged once
        assert names == ["judge"]  # the simulated annotator, under its own name
    assert counts["round-0/compare"][0] == counts["round-1/compare"][0] == 8
    assert 2 <= counts["round-0/sample"][0] <= 8


def test_kill_9_mid_round_then_rerun_continues(tiny_loop, tiny_example, tmp_path):
    """Killed while round 1 trains (round 0 done, round 1's tasks ranked), then rerun: the
    result has every task and judgment of the uninterrupted run, each once, and round 0's
    steps are not done again."""
    reference_dir, _, reference = tiny_loop
    example, overrides = tiny_example
    output_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "rlhfkit", "loop", "--config", str(example),
               *overrides(output_dir)]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    marker = output_dir / "round-1/rm.json"
    deadline = time.time() + 120
    while not marker.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists() and first.poll() is None, (tmp_path / "first.log").read_text()
    time.sleep(1.0)  # into round 1's policy step
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    log.close()
    assert not (output_dir / "round-1/compare.json").exists()
    before = per_tag(output_dir / "labels.sqlite")
    done_round0 = {p.name: p.stat().st_mtime_ns for p in (output_dir / "round-0").glob("*.json")}
    second = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = per_tag(output_dir / "labels.sqlite")
    for tag_ in ("round-0/sample", "round-0/compare", "round-1/sample"):
        assert after[tag_] == before[tag_]  # nothing sampled or judged twice
    assert after == per_tag(reference_dir / "labels.sqlite")  # nothing lost
    assert {p.name: p.stat().st_mtime_ns for p in (output_dir / "round-0").glob("*.json")} \
        == done_round0  # round 0's steps were not redone
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["labels"] for row in rows] == [row["labels"] for row in reference.history]


def test_uncertainty_selection_ranks_the_smallest_score_gaps(tiny_loop, tiny_example):
    """select_tasks with selection=uncertainty keeps the prompts whose candidates RM_0 scores
    closest (smallest |r_i − r_j|), checked against RM_0's scores computed here."""
    from itertools import combinations

    from rlhfkit.config import load_config
    from rlhfkit.loop.config import LoopConfig
    from rlhfkit.loop.rounds import Layout, select_tasks
    from rlhfkit.models.scoring import RewardScorer

    output_dir, _, _ = tiny_loop
    example, overrides = tiny_example
    config = load_config(LoopConfig, str(example), overrides(output_dir) + [
        "selection=uncertainty", "labels_per_round=3"])
    messages = [(("user", f"Review {i}:"),) for i in range(6)]
    samples = [[f"good {i}", f"bad {i}", f"so so {i} {i}"] for i in range(6)]
    chosen, scores = select_tasks(config, Layout(config), 1, messages, samples)
    scorer = RewardScorer.from_pretrained(output_dir / "round-0/rm/final")
    gaps = []
    for m, texts in zip(messages, samples):
        s = scorer.score_messages([m] * len(texts), texts)
        gaps.append(min(abs(a - b) for a, b in combinations(s, 2)))
    assert chosen == sorted(sorted(range(6), key=lambda i: gaps[i])[:3])
    assert sorted(scores) == list(range(6))
    random_config = load_config(LoopConfig, str(example), overrides(output_dir) + [
        "labels_per_round=3"])
    picked, no_scores = select_tasks(random_config, Layout(random_config), 1, messages, samples)
    assert len(picked) == 3 and no_scores == {}


def test_simulated_labels_do_not_depend_on_the_shown_order(tmp_path, monkeypatch):
    """judge_queue draws a task's noise in candidate order, not in the order the queue shows
    (random per lease): two stores holding the same six tasks, judged at T 1 (the noise
    decides) with the queue's shuffle seeded 1 and 2, store the same rankings."""
    import random

    import torch

    from rlhfkit.label.queue import next_task
    from rlhfkit.label.store import add_task, init_store
    from rlhfkit.loop import annotate

    def score(prompts, responses):  # 0.0, 0.1, 0.2, 0.3 by the answer's last digit
        return torch.tensor([0.1 * int(text[-1]) for text in responses])

    def judged(name: str, order_seed: int):
        store, _ = init_store(str(tmp_path / f"{name}.sqlite"))
        with store.transaction() as conn:
            for t in range(6):
                add_task(conn, (("user", f"Review {t}:"),), [f"answer {t} {c}" for c in range(4)],
                         ["m"] * 4, [{}] * 4, random.Random(t), "round-0/sample")
        shuffle = random.Random(order_seed)
        monkeypatch.setattr(annotate, "next_task", lambda s, a: next_task(s, a, shuffle))
        judge = annotate.annotator_named(store, "judge")
        assert annotate.judge_queue(store, judge, score, 1.0, 0.0, 0) == 6
        with store.engine.connect() as conn:
            rows = conn.execute(select(judgments.c.task_id, judgments.c.ranks,
                                       judgments.c.shown_order)
                                .order_by(judgments.c.task_id)).all()
        store.close()
        return [(r.task_id, list(r.ranks)) for r in rows], [list(r.shown_order) for r in rows]

    ranks_1, shown_1 = judged("one", 1)
    ranks_2, shown_2 = judged("two", 2)
    assert shown_1 != shown_2  # the queue showed the candidates in other orders
    assert ranks_1 == ranks_2


def test_sample_batch_size_sets_the_decode_passes(tiny_example, tmp_path, monkeypatch):
    """The loop's sampling (step 1's candidates, step 5's answers) decodes its k × prompts rows
    in passes of ``sample_batch_size``: 3 prompts × 3 = 9 rows → passes of 4, 4, 1 (default
    16: one pass of 9)."""
    import rlhfkit.online.rollout as rollout
    from rlhfkit.config import load_config
    from rlhfkit.loop.config import LoopConfig
    from rlhfkit.loop.rounds import sample_texts

    widths, real = [], rollout.generate

    def counting(model, prompt_ids, *args, **kwargs):
        widths.append(len(prompt_ids))
        return real(model, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(rollout, "generate", counting)
    example, overrides = tiny_example
    messages = [(("user", f"Review {i}:"),) for i in range(3)]
    for extra, passes in (["sample_batch_size=4"], [4, 4, 1]), ([], [9]):
        widths.clear()
        config = load_config(LoopConfig, str(example), overrides(tmp_path) + extra)
        samples = sample_texts(config, config.model.name, messages, 3, seed=0)
        assert widths == passes and [len(s) for s in samples] == [3, 3, 3]


@pytest.mark.parametrize("algorithm, section", [
    ("grpo", ["grpo.train.batch_size=4", "grpo.train.max_steps=2", "grpo.train.report_to=[]",
              "grpo.grpo.num_generations=2", "grpo.rollout.max_new_tokens=8"]),
    ("dpo", ["dpo.train.batch_size=4", "dpo.train.max_steps=2", "dpo.train.report_to=[]",
             "dpo.data.max_length=96"]),
])
def test_grpo_and_online_dpo_rounds(tiny_example, tmp_path, algorithm, section):
    """The policy step with the other algorithms, their own sections applied: GRPO against
    RM_0, DPO on round 0's pairs (the stage's config says what it trained on)."""
    import rlhfkit
    from rlhfkit.config import load_config
    from rlhfkit.loop.config import LoopConfig

    example, overrides = tiny_example
    output_dir = tmp_path / algorithm
    config = load_config(LoopConfig, str(example), overrides(output_dir) + [
        "rounds=1", f"algorithm={algorithm}", "prompts_per_round=4", "labels_per_round=4",
        "compare_prompts=2", *section])
    result = rlhfkit.run_loop(config)
    assert len(result.history) == 1 and 0 <= result.metrics["win_rate_previous"] <= 1
    stage = (output_dir / "round-0/policy/config.yaml").read_text()
    assert "max_steps: 2" in stage
    if algorithm == "grpo":
        assert str(output_dir / "round-0/rm/final") in stage and "num_generations: 2" in stage
    else:
        pairs = (output_dir / "round-0/pairs.jsonl").read_text().splitlines()
        assert pairs and str(output_dir / "round-0/pairs.jsonl") in stage
    assert (output_dir / "round-0/policy/final/config.json").exists()


def test_compare_answers_are_decoded_once_then_reused(tiny_example, tmp_path, monkeypatch):
    """Step 5a decodes a policy's compare answers in the first round that compares it, with one
    seed for every round, and reads them back after: round 1 decodes policy_2 only, and its
    tasks hold round 0's answers of policy_1 and policy_0, ``compare_samples`` of each. A rerun
    of the step does nothing; answers decoded with other settings (another compare_samples,
    another seed) are decoded again."""
    from rlhfkit.config import load_config
    from rlhfkit.label.store import init_store
    from rlhfkit.loop import rounds
    from rlhfkit.loop.config import LoopConfig

    decoded = []

    def decode(config, policy, messages, k, seed):  # stands in for the model
        decoded.append((policy, k, seed))
        return [[f"{policy} {seed} answers {p}.{j}" for j in range(k)]
                for p in range(len(messages))]

    monkeypatch.setattr(rounds, "sample_texts", decode)
    example, overrides = tiny_example
    config = load_config(LoopConfig, str(example), overrides(tmp_path) + ["compare_samples=2"])
    layout = rounds.Layout(config)
    pool = rounds.Prompts([], [], [(("user", f"Review {p}:"),) for p in range(3)])
    store, _ = init_store(str(tmp_path / "labels.sqlite"))
    try:
        assert rounds.compare_tasks_step(config, layout, store, pool, 0) == []
        assert decoded == [(layout.policy(1), 2, 500), (layout.policy(0), 2, 500)]
        decoded.clear()
        assert rounds.compare_tasks_step(config, layout, store, pool, 1) == ["policy_0",
                                                                            "policy_1"]
        assert decoded == [(layout.policy(2), 2, 500)]
        first, second = rounds.compare_texts(store, 0), rounds.compare_texts(store, 1)
        assert second["policy_1"] == first["policy_1"] and second["policy_0"] == first["policy_0"]
        assert second["policy_1"][1] == [f"{layout.policy(1)} 500 answers {p}.{j}"
                                         for p in range(3) for j in range(2)]
        assert len(second["policy_2"][1]) == 6
        decoded.clear()
        assert rounds.compare_tasks_step(config, layout, store, pool, 1) == [] and decoded == []
        one = load_config(LoopConfig, str(example), overrides(tmp_path) + ["compare_samples=1"])
        assert rounds.compare_tasks_step(one, layout, store, pool, 2) == []
        assert decoded == [(layout.policy(i), 1, 500) for i in (3, 2, 0)]
        decoded.clear()
        other = load_config(LoopConfig, str(example), overrides(tmp_path) + [
            "compare_samples=1", "seed=1"])
        assert rounds.compare_tasks_step(other, layout, store, pool, 3) == []
        assert decoded == [(layout.policy(i), 1, 1500) for i in (4, 3, 0)]
    finally:
        store.close()


def test_reused_compare_answers_are_what_decoding_gives(tiny_loop, tiny_example):
    """In the tiny loop (compare_samples 2), round 1's tasks hold round 0's answers of policy_1
    and policy_0, and policy_1 decoding again with the compare seed writes exactly them: the
    reuse saves the decoding and changes nothing compared. Each ranking gives 2 × 2 comparisons
    of policy_2 with policy_1, and the KL in passes of 3 responses is the one compare.json
    holds (one pass of 16)."""
    from rlhfkit.config import load_config
    from rlhfkit.label.leaderboard import comparisons_by_judgment
    from rlhfkit.loop import rounds
    from rlhfkit.loop.config import LoopConfig

    output_dir, _, _ = tiny_loop
    example, overrides = tiny_example
    config = load_config(LoopConfig, str(example), overrides(output_dir))
    assert config.compare_samples == 2
    layout = rounds.Layout(config)
    store = open_store(str(output_dir / "labels.sqlite"))
    try:
        first, second = rounds.compare_texts(store, 0), rounds.compare_texts(store, 1)
        groups = comparisons_by_judgment(store, tag_prefix="round-1/compare")
    finally:
        store.close()
    assert sorted(second) == ["policy_0", "policy_1", "policy_2"]
    assert second["policy_1"] == first["policy_1"] and second["policy_0"] == first["policy_0"]
    pool = rounds.load_prompts(config)
    again = rounds.sample_texts(config, layout.policy(1), pool.compare_messages, 2,
                                rounds.compare_seed(config))
    assert [t for answers in again for t in answers] == first["policy_1"][1]
    assert len(first["policy_1"][1]) == 16
    assert len(groups) == 8
    assert [sum({a, b} == {"policy_2", "policy_1"} for a, b, _ in g) for g in groups] == [4] * 8
    narrow = load_config(LoopConfig, str(example), overrides(output_dir) + ["sample_batch_size=3"])
    kl = rounds.kl_to(layout.policy(2), layout.policy(0), *second["policy_2"], narrow)
    stored = json.loads((output_dir / "round-1/compare.json").read_text())["kl_to_round0"]
    assert kl == pytest.approx(stored, rel=1e-4, abs=1e-5)


def test_first_round_labels_sizes_round_0_and_shifts_the_later_slices(tiny_example, tmp_path,
                                                                      monkeypatch):
    """first_round_labels 5 with prompts_per_round 3 and labels_per_round 2: round 0 samples
    prompts 0-4 and ranks all five; round 1 samples prompts 5-7 (never round 0's) and ranks two
    of them; round 2 samples 8-10. Unset (0), round 0 samples prompts 0-2 and ranks two, as
    every round. The pool must hold 5 + 3 × 2 prompts beside the compare prompts: one fewer is
    a config error naming the keys."""
    from rlhfkit.config import ConfigError, load_config
    from rlhfkit.label.schema import prompts
    from rlhfkit.label.store import init_store
    from rlhfkit.loop import rounds
    from rlhfkit.loop.config import LoopConfig

    def decode(config, policy, messages, k, seed):  # stands in for the model
        return [[f"{m[0][1]} answer {j}" for j in range(k)] for m in messages]

    monkeypatch.setattr(rounds, "sample_texts", decode)
    example, overrides = tiny_example
    pool = rounds.Prompts([], [(("user", f"Review {p}:"),) for p in range(11)], [])

    def sampled(extra: list[str], round_count: int) -> list[list[int]]:
        out = tmp_path / "_".join(extra or ["unset"])
        config = load_config(LoopConfig, str(example), overrides(out) + [
            "prompts_per_round=3", "labels_per_round=2", *extra])
        store, _ = init_store(str(tmp_path / f"{out.name}.sqlite"))
        try:
            per_round = []
            for r in range(round_count):
                rounds.sample_step(config, rounds.Layout(config), store, pool, r)
                with store.engine.connect() as conn:
                    per_round.append(sorted(int(text.split()[1][:-1]) for (text,) in conn.execute(
                        select(prompts.c.text).join(tasks, tasks.c.prompt_id == prompts.c.id)
                        .where(tasks.c.tag == rounds.tag(r, rounds.SAMPLE)))))
            return per_round
        finally:
            store.close()

    first, later, last = sampled(["first_round_labels=5"], 3)
    assert first == [0, 1, 2, 3, 4]
    assert len(later) == 2 and set(later) <= {5, 6, 7}
    assert len(last) == 2 and set(last) <= {8, 9, 10}
    unset = sampled([], 2)
    assert len(unset[0]) == 2 and set(unset[0]) <= {0, 1, 2} and set(unset[1]) <= {3, 4, 5}
    short = tmp_path / "short.jsonl"
    short.write_text("".join(f'{{"prompt": "Review {p}:"}}\n' for p in range(18)))
    config = load_config(LoopConfig, str(example), overrides(tmp_path) + [  # 8 compare prompts
        f"data.train_path={short}", "prompts_per_round=3",
        "labels_per_round=2", "first_round_labels=5", "rounds=3"])
    with pytest.raises(ConfigError, match=r"first_round_labels=5 \+ prompts_per_round=3 × 2 "
                                          r"more rounds = 11 fresh prompts, but the pool"):
        rounds.load_prompts(config)

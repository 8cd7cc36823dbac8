"""``output_dir/report.html`` of ``rlhfkit loop``: one row per round, the curves over rounds,
the leaderboard, the newest comparison's answers and the token-level view of the last policy
step's rollouts. The page's pieces are the demo report's (rlhfkit/demo/report.py: html_table,
plot_png, rollouts_html, STYLE): one report style for the project, self-contained (plots inlined).
Tests: tests/loop/test_loop.py.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from rlhfkit.demo.report import STYLE, html_table, plot_png, rollouts_html
from rlhfkit.loop.config import LoopConfig
from rlhfkit.loop.rounds import Layout, compare_texts, policy_name

# (title, metric keys) of the curves over rounds (x = the policy's index, r + 1)
CURVES = (
    ("Judge's score of the new policy (ground truth)", ("score_judge",)),
    ("Round's reward-model score of the new policy", ("score_rm",)),
    ("Reward-model held-out pair accuracy", ("rm_heldout_accuracy",)),
    ("KL to the round-0 policy (nats / response)", ("kl_to_round0",)),
    ("Win rate vs the previous policy", ("win_rate_previous",)),
)

HEADERS = ["round", "labels", "RM held-out acc. (this round)", "RM acc. (earlier rounds)",
           "RM_0 acc. (this round)", "RM_r / RM_0 acc. by the judge (this round)",
           "score by RM_r", "score by judge", "KL to round 0",
           "win rate vs previous [95%]", "win rate vs round 0 [95%]", "leaderboard (Elo [95%])"]


def interval(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "–"
    return f"{row[key]:.2f} [{row[key + '_lo']:.2f}, {row[key + '_hi']:.2f}]"


def number(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def board_text(board: list[dict]) -> str:
    return "; ".join(f"{b['model']} {b['elo']:.0f}" + (
        f" [{b['lo']:.0f}, {b['hi']:.0f}]" if b.get("lo") is not None else "") for b in board)


def table_rows(layout: Layout, rows: list[dict]) -> list[list]:
    out = []
    for row in rows:
        compare = json.loads((layout.round_dir(row["round"]) / "compare.json").read_text())
        out.append([row["round"], row["labels"], number(row["rm_heldout_accuracy"]),
                    number(row["rm_heldout_accuracy_earlier"]),
                    number(row["rm0_accuracy_on_this_round"]),
                    f"{number(row.get('rm_truth_accuracy'))} / "
                    f"{number(row.get('rm0_truth_accuracy'))}", number(row["score_rm"]),
                    number(row["score_judge"]), number(row["kl_to_round0"]),
                    interval(row, "win_rate_previous"), interval(row, "win_rate_round0"),
                    board_text(compare["leaderboard"])])
    return out


def answers(store_texts: dict, r: int, limit: int = 6) -> list[list]:
    """The newest comparison: each prompt with policy_0's, policy_r's and policy_{r+1}'s answers."""
    names = [n for n in (policy_name(0), policy_name(r), policy_name(r + 1)) if n in store_texts]
    names = list(dict.fromkeys(names))
    first = store_texts[names[0]][0]
    return [[first[p][-1][1]] + [store_texts[n][1][p] for n in names]
            for p in range(min(limit, len(first)))], names


def write_report(config: LoopConfig, layout: Layout, rows: list[dict], store=None) -> Path:
    plots = [plot_png(rows, title, keys, xlabel="policy (round + 1)") for title, keys in CURVES]
    plot_html = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots if p)
    answer_html = ""
    if store is not None and rows:
        sample_rows, names = answers(compare_texts(store, rows[-1]["round"]), rows[-1]["round"])
        answer_html = ("<h2>Answers on held-out prompts (last comparison)</h2>"
                       + html_table(["prompt"] + names, sample_rows))
    rollouts_path = layout.round_dir(rows[-1]["round"]) / "policy" / "rollouts.jsonl" \
        if rows else None
    rollouts = [json.loads(line) for line in rollouts_path.read_text().splitlines()
                if line.strip()][-2:] if rollouts_path and rollouts_path.exists() else []
    token_html = rollouts_html(rollouts)
    judge = (config.judge.reward.function or config.judge.reward.model_path
             or config.judge.reward.url or "none")
    notes = (f"{config.rounds} rounds; annotator {config.annotator}"
             + (f" (judge {judge}, T = {config.judge.temperature}, flip "
                f"{config.judge.flip_prob})" if config.annotator == "simulated" else "")
             + f"; selection {config.selection}; policy step {config.algorithm} from "
               f"{config.model.name}; reward model {config.rm_init} start; "
               f"{config.compare_prompts} held-out prompts per comparison, "
               f"{config.compare_samples} answer(s) of each policy per prompt.")
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>rlhfkit loop: iterated online RLHF</title><style>{STYLE}</style></head><body>
<h1>rlhfkit loop: iterated online RLHF</h1><p class="note">{html.escape(notes)}</p>
<h2>Rounds</h2>{html_table(HEADERS, table_rows(layout, rows))}
<p class="note">Labels: judgments of the round's sampled tasks. RM accuracies: share of the
strictly ordered pairs of held-out rankings the reward model orders right (RM_0: the round-0
reward model on this round's held-out rankings — what keeping it would give). Scores and KL:
the new policy's answers to the held-out prompts (KL: Σ log π − log π_0 per answer, re-tokenised
text). Win rates: share of the annotator's pairwise preferences the new policy wins (ties
half), 95% bootstrap interval over judgments; leaderboard: Bradley–Terry on the Elo scale over
every comparison so far.</p>
<h2>Curves over rounds</h2><div class="plots">{plot_html}</div>
{answer_html}
<h2>Inside a rollout (last policy step)</h2><p class="note">Response tokens coloured by the
per-token KL penalty term, the critic's value and the advantage: red positive, blue negative;
hover a token for its number.</p>{token_html}
</body></html>"""
    path = layout.root / "report.html"
    path.write_text(page)
    return path

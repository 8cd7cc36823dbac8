"""The HTML report is self-contained and shows curves, samples and the token view."""
from rlhfkit.demo.report import build_report, token_view


def test_token_view_colours_and_escapes():
    out = token_view({"tokens": ["<b>", " good"], "kl": [0.5, -1.0]}, "kl")
    assert "&lt;b&gt;" in out and "<b>\"" not in out
    assert "rgba(220,38,38,0.38)" in out  # +0.5 of max 1.0 → red at alpha 0.375
    assert "rgba(37,99,235,0.75)" in out  # −1.0 → blue at full alpha


def test_report_has_plots_table_and_no_external_resources():
    rows = [{"step": i, "score_mean": i / 10, "kl_mean": i / 100, "entropy": 2.0,
             "response_length_mean": 20} for i in range(1, 6)]
    page = build_report("Demo", [["positive share", 0.4, 0.9]], ["metric", "before", "after"],
                        rows, [{"prompt": "This film", "before": "was bad", "before_score": -1.0,
                                "after": "was great", "after_score": 2.0}],
                        [{"iteration": 3, "prompt": "p", "tokens": ["a"], "kl": [0.1],
                          "values": [0.2], "advantages": [-0.3], "score": 1.0}])
    assert page.count("data:image/png;base64,") == 4
    assert "was great" in page and "positive share" in page and "Iteration 3" in page
    assert "http://" not in page and "https://" not in page


def test_token_view_has_a_fourth_row_for_the_sampler_trainer_gap():
    """Rollout fidelity in the token-level view: a rollout of rollouts.jsonl with ``fidelity``
    (|log π_sampler − log π_trainer| per token) gets a fourth row after kl, values and
    advantages; one without it (rows the trainer did not compare) gets the three."""
    rollout = {"iteration": 2, "prompt": "p", "tokens": ["a", "b"], "kl": [0.1, 0.2],
               "values": [0.2, 0.1], "advantages": [-0.3, 0.3], "fidelity": [2e-6, 0.25],
               "score": 1.0}
    without = {k: v for k, v in rollout.items() if k != "fidelity"}
    page = build_report("Demo", [], ["metric"], [], [], [rollout, without])
    rows = page.split('<div class="tokens">')[1:]
    assert [r.split("</b>")[0] for r in rows] == \
        ["<b>kl", "<b>values", "<b>advantages", "<b>fidelity", "<b>kl", "<b>values",
         "<b>advantages"]
    assert 'title="fidelity = 0.2500"' in rows[3] and "max |v| 0.25" in rows[3]


def test_critic_free_rollouts_show_only_their_per_token_rows_and_the_stage_name():
    """GRPO's rollouts.jsonl has per-token kl and fidelity but no values and one advantage per
    response (a number, not a row): the view shows kl and fidelity; the headers name the stage."""
    rollout = {"iteration": 4, "prompt": "p", "tokens": ["a", "b"], "kl": [0.1, 0.2],
               "advantage": 0.4, "fidelity": [1e-6, 3e-6], "score": 0.5}
    page = build_report("Demo", [], ["metric"], [], [{"prompt": "p", "before": "x",
                                                       "after": "y"}], [rollout], stage="GRPO")
    rows = page.split('<div class="tokens">')[1:]
    assert [r.split("</b>")[0] for r in rows] == ["<b>kl", "<b>fidelity"]
    assert "<th>before GRPO</th>" in page and "<th>after GRPO</th>" in page
    assert "before PPO" not in page

"""selection: ensemble (rlhfkit/loop/selection.py): the disagreement by hand, the heads' fit by
its stationarity condition, the features that reproduce a reward model's scores (decoder and
encoder), and select_tasks on the tiny loop's RM_0."""
import math

import pytest
import torch

from rlhfkit.loop.selection import (
    binary_entropy,
    fit_head,
    head_features,
    pair_disagreement,
)

LN2 = math.log(2)


def test_pair_disagreement_by_hand():
    """M = 2 members, K = 2: member 1 scores (ln 3, 0) → p = σ(ln 3) = 3/4; member 2 (0, ln 3)
    → p = 1/4. p̄ = 1/2: H(1/2) = ln 2 = 0.693147; H(3/4) = H(1/4) = ¾ ln(4/3) + ¼ ln 4 =
    0.215762 + 0.346574 = 0.562335 → I = 0.693147 − 0.562335 = 0.130812.
    K = 3, member 1 (ln 3, 0, 0), member 2 (0, ln 3, 0): pair (0, 1) as above, 0.130812; pair
    (0, 2): p = 3/4 and 1/2, p̄ = 5/8, H(5/8) = ⅝ ln(8/5) + ⅜ ln(8/3) = 0.293752 + 0.367811 =
    0.661563, minus (0.562335 + 0.693147)/2 = 0.627741 → 0.033822; pair (1, 2) the same by
    symmetry: 0.130812 + 2 × 0.033822 = 0.198456."""
    ln3 = math.log(3)
    two = torch.tensor([[ln3, 0.0], [0.0, ln3]], dtype=torch.float64)
    assert float(pair_disagreement(two)) == pytest.approx(0.130812, abs=1e-6)
    three = torch.tensor([[ln3, 0.0, 0.0], [0.0, ln3, 0.0]], dtype=torch.float64)
    assert float(pair_disagreement(three)) == pytest.approx(0.198456, abs=1e-6)
    assert float(binary_entropy(torch.tensor([0.0, 0.5, 1.0])).sum()) == pytest.approx(LN2)


def test_pair_disagreement_is_zero_when_members_agree_however_unsure():
    """Every member a coin toss on every pair (equal scores): the smallest score gap would rank
    this task first (gap 0); the disagreement is 0 — the annotator's noise is not the model's
    ignorance. Agreeing confident members: 0 too. Shifting one member's scores by a constant
    or permuting members changes nothing."""
    assert float(pair_disagreement(torch.zeros(4, 3, dtype=torch.float64))) == 0.0
    same = torch.tensor([[2.0, -1.0, 0.5]] * 3, dtype=torch.float64)
    assert float(pair_disagreement(same)) == pytest.approx(0.0, abs=1e-12)
    scores = torch.tensor([[0.3, -1.2, 0.8, 0.0], [1.1, 0.4, -0.6, 0.2],
                           [-0.5, 0.9, 0.1, 1.5]], dtype=torch.float64)
    value = float(pair_disagreement(scores))
    assert value > 0
    shifted = scores + torch.tensor([[5.0], [-2.0], [0.0]], dtype=torch.float64)
    assert float(pair_disagreement(shifted)) == pytest.approx(value, abs=1e-12)
    assert float(pair_disagreement(scores[[2, 0, 1]])) == pytest.approx(value, abs=1e-12)


def test_fit_head_by_its_stationarity_condition():
    """One list, best candidate features (1, 0), worse (0, 0), prior 0, l2 = 1: minimise
    −log σ(w₀) + ½(w₀² + w₁²) → w₁ = 0 and w₀ = σ(−w₀) (gradient −σ(−w₀) + w₀ = 0), ≈ 0.4013.
    A huge l2 keeps the prior, and so does a tie (no pair to learn from)."""
    features = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)  # (B=1, K=2, H=2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    ranks = torch.tensor([[1, 2]])
    prior = torch.zeros(2, dtype=torch.float64)
    w = fit_head(features, mask, ranks, prior, 1.0)
    assert float(w[1]) == pytest.approx(0.0, abs=1e-9)
    assert float(w[0]) == pytest.approx(float(torch.sigmoid(-w[0])), abs=1e-6)
    assert float(w[0]) == pytest.approx(0.4013, abs=1e-3)
    kept = torch.tensor([0.3, -0.7], dtype=torch.float64)
    assert torch.allclose(fit_head(features, mask, ranks, kept, 1e9), kept, atol=1e-6)
    tied = fit_head(features, mask, torch.tensor([[1, 1]]), kept, 1.0)  # no pair: the prior
    assert torch.allclose(tied, kept, atol=1e-9)


def test_head_features_reproduce_the_scores(tiny_loop, tiny_bert, bert_tokenizer):
    """features · weight + bias = the scorer's scores, for the tiny loop's decoder RM_0 (read at
    the last real token) and for an encoder (BERT's pooled output; all-MiniLM-L6-v2's kind)."""
    from rlhfkit.models import load_scalar_model
    from rlhfkit.models.scoring import RewardScorer

    output_dir, _, _ = tiny_loop
    messages = [(("user", "Review one:"),), (("user", "A much longer review opening:"),)] * 3
    responses = ["good", "bad bad bad", "so so", "fine, really fine", "x", "the plot"]
    decoder = RewardScorer.from_pretrained(output_dir / "round-0/rm/final", "cpu")
    stats = {"template": "plain", "system_prompt": "", "max_prompt_length": 8,
             "max_length": 32, "mean": 0.0, "std": 1.0}
    encoder = RewardScorer(load_scalar_model(tiny_bert, bert_tokenizer).eval(), bert_tokenizer,
                           stats, torch.device("cpu"))
    for scorer in (decoder, encoder):
        features, weight, bias = head_features(scorer, messages, responses)
        assert features.shape == (6, weight.shape[0])
        expected = torch.tensor(scorer.score_messages(messages, responses), dtype=torch.float64)
        assert torch.allclose(features @ weight + bias, expected, atol=1e-5)


def test_ensemble_selection_on_the_tiny_loop(tiny_loop, tiny_example):
    """select_tasks with selection=ensemble: labels_per_round tasks, the largest disagreement
    of the bootstrap heads first, the same picks on a second call (seeded), RM_0's own scores
    for the store; members fitted on RM_0's training rankings (round-0/rm_data/train.jsonl)."""
    from rlhfkit.config import load_config
    from rlhfkit.loop.config import LoopConfig
    from rlhfkit.loop.rounds import Layout, select_tasks
    from rlhfkit.loop.selection import by_disagreement
    from rlhfkit.models.scoring import RewardScorer

    output_dir, _, _ = tiny_loop
    example, overrides = tiny_example
    config = load_config(LoopConfig, str(example), overrides(output_dir) + [
        "selection=ensemble", "labels_per_round=3", "ensemble_size=4"])
    layout = Layout(config)
    assert layout.rm_train_path(0).exists()
    messages = [(("user", f"Review {i}:"),) for i in range(6)]
    samples = [[f"good {i}", f"bad {i}", f"so so {i} {i}"] for i in range(6)]
    samples[5] = ["same", "same", "same"]  # one distinct candidate: never a task
    chosen, scores = select_tasks(config, layout, 1, messages, samples)
    priority, _ = by_disagreement(config, 1, layout.reward_model(0), layout.rm_train_path(0),
                                  messages, samples, list(range(5)))
    assert chosen == sorted(sorted(range(5), key=lambda i: (priority[i], i))[:3])
    assert all(p <= 0 for p in priority.values()) and len(set(priority.values())) > 1
    assert select_tasks(config, layout, 1, messages, samples) == (chosen, scores)
    scorer = RewardScorer.from_pretrained(layout.reward_model(0))
    for i in range(5):
        assert scores[i] == pytest.approx(scorer.score_messages([messages[i]] * 3, samples[i]),
                                          abs=1e-5)

"""selection: ensemble (rlhfkit/loop/selection.py): the features that reproduce a reward model's
scores (decoder and encoder), and select_tasks on the tiny loop's RM_0. The math (the
disagreement by hand, the heads' fit by its stationarity condition): tests/ops/test_ranking.py."""
import pytest
import torch

from rlhfkit.loop.selection import head_features



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

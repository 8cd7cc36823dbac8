"""Reward sources (rlhfkit/online/rewards.py) and the prompts the online loop hands them
(rlhfkit/online/loop.py::encode_prompts): a reward model reads the whole conversation, rendered
as in its training; a Python reward function reads a plain string. The tiny reward model:
tests/online/conftest.py; the served one (reward.url): tests/online/test_reward_server.py."""
import pytest

from rlhfkit.config import DataConfig
from rlhfkit.data import PromptExample
from rlhfkit.models.scoring import RewardScorer
from rlhfkit.online.loop import encode_prompts
from rlhfkit.online.rewards import FunctionReward, ModelReward, as_one_text

TWO_TURNS = (("user", "Name a fruit that is yellow."), ("assistant", "A banana."),
             ("user", "And one that is red?"))


def read_inputs(model_reward: ModelReward, prompts, responses) -> list[str]:
    """The texts the reward model's forward pass receives (decoded input_ids, padding dropped)."""
    seen = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs["attention_mask"].bool()
        seen.extend(model_reward.scorer.tokenizer.decode(row[m]) for row, m in zip(ids, mask))

    handle = model_reward.scorer.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model_reward(prompts, responses)
    finally:
        handle.remove()
    return seen


def test_reward_model_reads_the_whole_conversation(tiny_rm, tokenizer, device):
    pool = encode_prompts([PromptExample(TWO_TURNS)], tokenizer, DataConfig())
    reward = ModelReward(tiny_rm, device=device, dtype="float32")
    (text,) = read_inputs(reward, pool.texts, ["A strawberry."])
    assert "Name a fruit that is yellow." in text and "A banana." in text
    assert "And one that is red?" in text and "A strawberry." in text
    # ... rendered exactly as the RM's training renders the dialogue (score_messages).
    scorer = RewardScorer.from_pretrained(tiny_rm, device=device, dtype="float32")
    expected = scorer.score_messages([TWO_TURNS], ["A strawberry."])
    assert reward(pool.texts, ["A strawberry."]).tolist() == pytest.approx(expected, abs=1e-6)


def test_single_turn_prompt_scores_as_before(tiny_rm, tokenizer, device):
    pool = encode_prompts([PromptExample((("user", "Name a fruit."),))], tokenizer, DataConfig())
    reward = ModelReward(tiny_rm, device=device, dtype="float32")
    scorer = RewardScorer.from_pretrained(tiny_rm, device=device, dtype="float32")
    assert reward(pool.texts, ["A pear."]).tolist() == \
        pytest.approx(scorer(["Name a fruit."], ["A pear."]), abs=1e-6)
    # A plain string (a caller outside the loop) is a single user turn.
    assert reward(["Name a fruit."], ["A pear."]).tolist() == \
        pytest.approx(scorer(["Name a fruit."], ["A pear."]), abs=1e-6)


def test_prompt_free_inputs_keep_the_conversation_text(tiny_rm, tokenizer, device):
    pool = encode_prompts([PromptExample(TWO_TURNS)], tokenizer, DataConfig())
    reward = ModelReward(tiny_rm, device=device, dtype="float32", model_input="text")
    (text,) = read_inputs(reward, pool.texts, [" A strawberry."])
    assert "A banana." in text and "A strawberry." in text


@pytest.mark.parametrize("prompt, response, text", [
    ("I loved this", "movie.", "I loved this movie."),  # a stripped continuation: one space back
    ("I loved this", " movie.", "I loved this movie."),  # a decoded one keeps its own space
    ("I loved this ", "movie.", "I loved this movie."),
    ("I loved it", "'s ending.", "I loved it's ending."),  # punctuation joins as it is
    ("I loved it", ", truly.", "I loved it, truly."),
    ("这部电影很", "好看。", "这部电影很好看。"),  # CJK: no spaces between characters
    ("", "Great.", "Great."),
    ("Great.", "", "Great."),
])
def test_as_one_text_keeps_the_words_at_the_seam_apart(prompt, response, text):
    assert as_one_text(prompt, response) == text


def test_reward_functions_read_the_conversation_as_a_plain_string(tokenizer):
    pool = encode_prompts([PromptExample(TWO_TURNS), PromptExample((("user", "Hi there"),))],
                          tokenizer, DataConfig())
    seen = []
    reward = FunctionReward("rlhfkit.online.rewards:char_share")  # the shipped wrapper ...
    reward.function = lambda prompts, responses: seen.extend(prompts) or [0.0] * len(responses)
    # ... around a function that records what it is given.
    reward(pool.texts, ["x", "y"])
    assert all(type(p) is str for p in seen)  # a plain str, nothing attached
    # One paragraph per turn, HH-style role names; a single user turn is its text unchanged.
    assert seen == ["Human: Name a fruit that is yellow.\n\nAssistant: A banana.\n\n"
                    "Human: And one that is red?", "Hi there"]

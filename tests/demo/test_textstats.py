"""Hand values for distinct-n and repetition (rlhfkit/demo/textstats.py)."""
import pytest

from rlhfkit.demo.textstats import distinct_n, mean_repetition, repetition_rate, words


def test_words_split_punctuation_and_lowercase():
    assert words("Great film, GREAT!") == ["great", "film", ",", "great", "!"]


def test_distinct_n_hand_values():
    # "a b a b": bigrams ab, ba, ab → 2 unique / 3
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # unigrams over two texts: a b c | a a → {a,b,c} 3 unique / 5
    assert distinct_n(["a b c", "a a"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a"], 2) == 0.0


def test_repetition_rate_hand_values():
    assert repetition_rate("great great great great") == pytest.approx(0.75)  # 3 of 4 repeat
    assert repetition_rate("a fine film") == 0.0
    assert mean_repetition(["great great", "a b"]) == pytest.approx(0.25)

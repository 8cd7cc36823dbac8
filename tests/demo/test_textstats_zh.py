"""Chinese in the text statistics: each CJK character is a word (rlhfkit/demo/textstats.py)."""
import pytest

from rlhfkit.demo.textstats import distinct_n, repetition_rate, words


def test_each_cjk_character_is_a_word_and_latin_runs_stay_whole():
    assert words("好看，Good 2！") == ["好", "看", "，", "good", "2", "！"]


def test_distinct_2_of_chinese_hand_value():
    # "很好很好": bigrams 很好, 好很, 很好 → 2 unique / 3; without the per-character split the
    # text would be one word and have no bigram at all.
    assert distinct_n(["很好很好"], 2) == pytest.approx(2 / 3)
    # two texts: 好看 | 好吃 → bigrams 好看, 好吃: 2 unique / 2
    assert distinct_n(["好看", "好吃"], 2) == 1.0


def test_repetition_of_chinese_hand_value():
    assert repetition_rate("好好好好") == pytest.approx(0.75)  # 3 of 4 characters repeat
    assert repetition_rate("这部电影") == 0.0

"""Text statistics that catch reward hacking: distinct-n and repetition rate. Pure python.

A policy that learns to repeat one rewarded word ("great great great …") keeps a high score
while distinct-2 collapses and the repetition rate climbs; the demo reports both before and
after PPO. Chinese is written without spaces, so each CJK character counts as a word
(character-level distinct-n, as Chinese generation papers report it). Tests:
tests/demo/test_textstats.py, tests/demo/test_textstats_zh.py.
"""
from __future__ import annotations

import re

# One CJK ideograph (U+3400–U+9FFF, U+F900–U+FAFF), or a run of other word characters, or one
# punctuation mark.
_CJK = "\u3400-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over a set of texts (Li et al. 2016); 0 when there are none."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 1) -> float:
    """Share of n-grams in one text that already appeared earlier in that text."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def mean_repetition(texts: list[str], n: int = 1) -> float:
    return sum(repetition_rate(t, n) for t in texts) / len(texts) if texts else 0.0

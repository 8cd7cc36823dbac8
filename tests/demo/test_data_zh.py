"""data/sentiment_zh (the Chinese demo's data): counts, checksums, and no overlap between the
reward model's pairs and the held-out openings (scripts/build_sentiment_zh.py)."""
import gzip
import hashlib
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "data" / "sentiment_zh"
COUNTS = {"pairs_train.jsonl.gz": 3000, "pairs_test.jsonl.gz": 1000,
          "openings_test.jsonl": 200, "openings_train.jsonl": 1000}
ISSUE_OPENINGS = ["刚收到货，感觉", "这部电影很", "说实话，真的很", "这次购物总的来说体验很"]


def rows(name: str) -> list[dict]:
    opener = gzip.open if name.endswith(".gz") else open
    with opener(DATA / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_match_the_readme_and_the_checksums(name):
    assert len(rows(name)) == COUNTS[name]
    assert f"{COUNTS[name]:,}" in (DATA / "README.md").read_text(encoding="utf-8")
    sums = dict(reversed(line.split()) for line in (DATA / "SHA256SUMS").read_text().splitlines())
    assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == sums[name], \
        "rerun scripts/build_sentiment_zh.py"
    assert name in (DATA / "PROVENANCE.md").read_text(encoding="utf-8")


def test_pairs_are_prompt_free_chinese_reviews_used_once():
    reviews = [t for name in ("pairs_train.jsonl.gz", "pairs_test.jsonl.gz") for r in rows(name)
               for t in (r["chosen"], r["rejected"]) if r["prompt"] == ""]
    assert len(reviews) == 8000 == len(set(reviews))
    assert all(10 <= len(t) <= 150 for t in reviews)
    assert sum(any("\u4e00" <= c <= "\u9fff" for c in t) for t in reviews) > 0.99 * len(reviews)


def test_held_out_openings_never_begin_a_reward_model_review_or_a_training_prompt():
    held_out = [r["prompt"] for r in rows("openings_test.jsonl")]
    assert len(set(held_out)) == 200 and all(len(p) == 10 for p in held_out)
    pair_texts = [t for name in ("pairs_train.jsonl.gz", "pairs_test.jsonl.gz")
                  for r in rows(name) for t in (r["chosen"], r["rejected"])]
    assert not [p for p in held_out if any(t.startswith(p) for t in pair_texts)]
    train = [r["prompt"] for r in rows("openings_train.jsonl")]
    assert not set(held_out) & set(train)


def test_the_training_pool_starts_with_the_issue_openings():
    train = [r["prompt"] for r in rows("openings_train.jsonl")]
    assert train[:4] == ISSUE_OPENINGS and len(set(train)) == len(train)

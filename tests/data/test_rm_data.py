"""The bundled IMDB reward-model sets (scripts/build_bundled_data.py::build_imdb_rm): counts,
formats, no ties, no review reused, train/test disjoint, and 99.9% of reviews fit
rm_imdb.yaml's max_length whole (so the score is read at its EOS)."""
import gzip
import json
from pathlib import Path

import pytest
import yaml

from rlhfkit.data import load_examples

DATA = Path(__file__).resolve().parents[2] / "data"
COUNTS = {"imdb/pairs_train.jsonl.gz": 3000, "imdb/pairs_test.jsonl.gz": 1000,
          "imdb/ranked4_test.jsonl.gz": 250}


def responses(name: str) -> list[tuple]:
    return [e.responses for e in load_examples(str(DATA / name), "ranked")]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_prompt_free_and_no_review_reused(name):
    with gzip.open(DATA / name, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == COUNTS[name] and all(row["prompt"] == "" for row in rows)
    texts = [t for r in responses(name) for t in r]
    assert len(texts) == len(set(texts))  # parse_ranked already rejects ties inside a row
    assert all(len(t) <= 400 for t in texts)
    assert all(len(r) == (4 if "ranked4" in name else 2) for r in responses(name))


def test_train_and_test_share_no_review():
    train = {t for r in responses("imdb/pairs_train.jsonl.gz") for t in r}
    test = {t for name in ("imdb/pairs_test.jsonl.gz", "imdb/ranked4_test.jsonl.gz")
            for r in responses(name) for t in r}
    assert not train & test


def test_reviews_fit_rm_imdb_max_length(tokenizer):
    config = yaml.safe_load((DATA.parent / "examples/rm_imdb.yaml").read_text())
    texts = [t for name in COUNTS for r in responses(name) for t in r]
    lengths = [len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    fit = sum(n <= config["data"]["max_length"] for n in lengths)  # + BOS (empty prompt) + EOS
    assert fit >= 0.999 * len(lengths)  # 6 of 9,000 (digit/symbol-heavy) are cut, losing the EOS

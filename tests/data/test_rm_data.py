"""The bundled IMDB reward-model sets (scripts/build_bundled_data.py::build_imdb_rm): counts,
formats, no ties, no review reused, train/test disjoint; 99.9% of the 400-character reviews fit
128 SmolLM2 tokens whole (score read at the EOS) and ~99% of the 1,000-character ones fit
rm_imdb.yaml's max_length in MiniLM tokens."""
import gzip
import json
from pathlib import Path

import pytest
import yaml

from rlhfkit.data import load_examples

DATA = Path(__file__).resolve().parents[2] / "data"
COUNTS = {"imdb/pairs_train.jsonl.gz": 3000, "imdb/pairs_test.jsonl.gz": 1000,
          "imdb/ranked4_test.jsonl.gz": 250, "imdb/pairs_long_train.jsonl.gz": 3000,
          "imdb/pairs_long_test.jsonl.gz": 1000, "imdb/ranked4_long_test.jsonl.gz": 250}
SHORT = [name for name in COUNTS if "_long" not in name]
LONG = [name for name in COUNTS if "_long" in name]


def responses(name: str) -> list[tuple]:
    return [e.responses for e in load_examples(str(DATA / name), "ranked")]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_prompt_free_and_no_review_reused(name):
    with gzip.open(DATA / name, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == COUNTS[name] and all(row["prompt"] == "" for row in rows)
    texts = [t for r in responses(name) for t in r]
    assert len(texts) == len(set(texts))  # parse_ranked already rejects ties inside a row
    assert all(len(t) <= (1000 if "_long" in name else 400) for t in texts)
    assert all(len(r) == (4 if "ranked4" in name else 2) for r in responses(name))


@pytest.mark.parametrize("names", [SHORT, LONG])
def test_train_and_test_share_no_review(names):
    train = {t for r in responses(names[0]) for t in r}
    test = {t for name in names[1:] for r in responses(name) for t in r}
    assert not train & test


def test_long_sets_are_the_short_sets_cut_later():
    """Same seeds: pair i of pairs_long_* holds the same two reviews as pair i of pairs_*."""
    for short, long in zip(SHORT, LONG):
        for a, b in zip(responses(short), responses(long)):
            assert all(y.startswith(x) for x, y in zip(a, b))


def test_short_reviews_fit_128_smollm2_tokens(tokenizer):
    texts = [t for name in SHORT for r in responses(name) for t in r]
    lengths = [len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    fit = sum(n <= 128 for n in lengths)  # + BOS (empty prompt) + EOS
    assert fit >= 0.999 * len(lengths)  # 6 of 9,000 (digit/symbol-heavy) are cut, losing the EOS


def test_long_reviews_fit_rm_imdb_max_length(bert_tokenizer):
    config = yaml.safe_load((DATA.parent / "examples/rm_imdb.yaml").read_text())
    texts = [t for name in LONG for r in responses(name) for t in r]
    lengths = [len(ids) + 2 for ids in bert_tokenizer(texts, add_special_tokens=False)["input_ids"]]
    fit = sum(n <= config["data"]["max_length"] for n in lengths)  # + [CLS] + [SEP]
    assert fit >= 0.985 * len(lengths)  # 98.9%: MiniLM reads [CLS], so a cut tail loses only text

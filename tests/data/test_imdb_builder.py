"""rlhfkit.data.imdb (pairs / ranked lists / openings from IMDB ratings) and the bundled data/ files.

Needs only the standard library and pytest.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from rlhfkit.data.imdb import (
    clean_text,
    load_reviews,
    make_openings,
    make_pairs,
    make_ranked_lists,
    truncate,
)

DATA = Path(__file__).resolve().parents[2] / "data"
RATINGS = (1, 2, 3, 4, 7, 8, 9, 10)


@pytest.fixture
def reviews() -> list[dict]:
    """10 reviews per IMDB rating, each text unique and naming its rating."""
    return [
        {"id": f"r{r}_{i}", "text": f"review {i} rated {r} of ten with some more words here",
         "rating": r, "label": int(r >= 7)}
        for r in RATINGS for i in range(10)
    ]


def rating_of(text: str) -> int:
    return int(text.split()[3])


# ---------------------------------------------------------------- text helpers

def test_clean_text_strips_br_and_is_idempotent():
    raw = "Great film.<br /><br />Really.<br/>  Go see it. "
    assert clean_text(raw) == "Great film. Really. Go see it."
    assert clean_text(clean_text(raw)) == clean_text(raw)


@pytest.mark.parametrize("max_chars, expected", [
    (None, "the quick brown fox"),
    (100, "the quick brown fox"),
    (15, "the quick brown"),   # text[15] is a space: the whole word "brown" fits
    (14, "the quick"),         # "brow" would be half a word
    (3, "the"),
    (2, "th"),                 # first word longer than the limit: the only mid-word cut
])
def test_truncate_at_word_boundary(max_chars, expected):
    assert truncate("the quick brown fox", max_chars) == expected


def test_load_reviews_cleans_raw_rows_and_derives_label(tmp_path):
    path = tmp_path / "raw.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "test/pos/1_9", "text": "Loved it.<br /><br />Twice.", "rating": 9}) + "\n")
        f.write(json.dumps({"id": "test/neg/2_2", "text": "Dull.", "rating": 2, "label": 0}) + "\n")
    assert load_reviews(path) == [
        {"id": "test/pos/1_9", "text": "Loved it. Twice.", "rating": 9, "label": 1},
        {"id": "test/neg/2_2", "text": "Dull.", "rating": 2, "label": 0},
    ]


# ---------------------------------------------------------------- pairs

def test_pairs_chosen_rating_strictly_higher_and_positive_vs_negative_by_default(reviews):
    pairs = make_pairs(reviews, n=40, seed=0, with_ratings=True)
    assert len(pairs) == 40
    for p in pairs:
        assert rating_of(p["chosen"]) == p["chosen_rating"] and rating_of(p["rejected"]) == p["rejected_rating"]
        assert p["chosen_rating"] >= 7 and p["rejected_rating"] <= 4  # default: cross-label pairs
    # 40 pairs use all 80 reviews once (reuse=False): nothing twice, across or inside pairs.
    texts = [t for p in pairs for t in (p["chosen"], p["rejected"])]
    assert len(set(texts)) == 80


def test_pairs_without_cross_label_keep_the_rating_gap(reviews):
    pairs = make_pairs(reviews, n=20, seed=1, cross_label=False, min_rating_gap=2)
    assert all(rating_of(p["chosen"]) - rating_of(p["rejected"]) >= 2 for p in pairs)
    # Same-label pairs (e.g. 10 vs 7) are possible now and do occur.
    assert any(rating_of(p["rejected"]) >= 7 or rating_of(p["chosen"]) <= 4 for p in pairs)


def test_pairs_never_ties(reviews):
    with pytest.raises(ValueError, match="min_rating_gap"):
        make_pairs(reviews, n=1, seed=0, cross_label=False, min_rating_gap=0)


def test_pairs_raise_when_reviews_run_out_unless_reuse(reviews):
    with pytest.raises(ValueError, match="only 40 pairs"):
        make_pairs(reviews, n=41, seed=0)
    pairs = make_pairs(reviews, n=200, seed=0, reuse=True)
    assert all(rating_of(p["chosen"]) > rating_of(p["rejected"]) for p in pairs)


def test_pairs_prompt_option(reviews):
    assert {p["prompt"] for p in make_pairs(reviews, n=5, seed=0)} == {""}
    pairs = make_pairs(reviews, n=5, seed=0, prompt="Write a movie review:")
    assert {p["prompt"] for p in pairs} == {"Write a movie review:"}
    assert set(pairs[0]) == {"prompt", "chosen", "rejected"}  # no extra keys unless with_ratings


def test_pairs_max_chars_cuts_at_word_boundary(reviews):
    for p in make_pairs(reviews, n=10, seed=0, max_chars=20):
        for text in (p["chosen"], p["rejected"]):
            assert len(text) <= 20 and text.startswith("review ") and not text.endswith(" ")
            assert any(r["text"].startswith(text + " ") for r in reviews)  # whole words of a review


# ---------------------------------------------------------------- ranked lists

@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_ranked_lists_strictly_decreasing_distinct_reviews(reviews, k):
    lists = make_ranked_lists(reviews, k=k, n=80 // k, seed=3, with_ratings=True)
    assert len(lists) == 80 // k
    for row in lists:
        ratings = [rating_of(t) for t in row["responses"]]
        assert ratings == row["ratings"] and len(ratings) == k
        assert all(a > b for a, b in zip(ratings, ratings[1:]))  # best -> worst, no ties
        assert len(set(row["responses"])) == k
    texts = [t for row in lists for t in row["responses"]]
    assert len(texts) == len(set(texts))  # reuse=False: no review in two lists either


def test_ranked_lists_errors(reviews):
    with pytest.raises(ValueError, match="k must be >= 2"):
        make_ranked_lists(reviews, k=1, n=1, seed=0)
    with pytest.raises(ValueError, match="8 distinct ratings"):
        make_ranked_lists(reviews, k=8, n=11, seed=0)   # 10 reviews per rating: 10 lists at most
    with pytest.raises(ValueError):
        make_ranked_lists(reviews, k=9, n=1, seed=0)    # only 8 ratings exist
    assert len(make_ranked_lists(reviews, k=8, n=30, seed=0, reuse=True)) == 30


def test_ranked_lists_prompt_and_max_chars(reviews):
    lists = make_ranked_lists(reviews, k=3, n=4, seed=0, prompt="Movie review:", max_chars=25)
    assert {row["prompt"] for row in lists} == {"Movie review:"}
    assert set(lists[0]) == {"prompt", "responses"}
    assert all(len(t) <= 25 for row in lists for t in row["responses"])


# ---------------------------------------------------------------- determinism

def test_deterministic_under_seed_and_inputs_untouched(reviews):
    before = [dict(r) for r in reviews]
    assert make_pairs(reviews, n=30, seed=7) == make_pairs(reviews, n=30, seed=7)
    assert make_pairs(reviews, n=30, seed=7) != make_pairs(reviews, n=30, seed=8)
    assert make_ranked_lists(reviews, k=4, n=15, seed=7) == make_ranked_lists(reviews, k=4, n=15, seed=7)
    assert make_ranked_lists(reviews, k=4, n=15, seed=7) != make_ranked_lists(reviews, k=4, n=15, seed=8)
    assert reviews == before


# ---------------------------------------------------------------- openings

@pytest.mark.parametrize("n_words", [1, 3, 8])
def test_openings_are_prefixes_of_at_most_n_words(reviews, n_words):
    rows = make_openings(reviews, n_words=n_words)
    for row in rows:
        assert set(row) == {"prompt"}
        assert 1 <= len(row["prompt"].split()) <= n_words
        assert any(r["text"].startswith(row["prompt"]) for r in reviews)
    assert len(rows) == len({row["prompt"] for row in rows})  # repeated openings dropped


def test_openings_of_short_review_and_bad_n_words():
    assert make_openings([{"text": "Too short."}], n_words=8) == [{"prompt": "Too short."}]
    with pytest.raises(ValueError):
        make_openings([{"text": "x"}], n_words=0)


# ---------------------------------------------------------------- bundled data/ files

# Counts documented in data/README.md.
BUNDLED_ROWS = {
    "tiny/sft.jsonl": 48,
    "tiny/pairs.jsonl": 48,
    "tiny/ranked.jsonl": 32,
    "tiny/prompts.jsonl": 32,
    "sft_en.jsonl": 90,
    "hh/hh_harmless_test.jsonl.gz": 2312,
    "imdb/reviews_train.jsonl.gz": 6000,
    "imdb/reviews_test.jsonl.gz": 3000,
    "imdb/openings_train.jsonl": 1000,
    "imdb/openings_test.jsonl": 200,
}
ROW_KEYS = {
    "tiny/sft.jsonl": {"prompt", "response"},
    "tiny/pairs.jsonl": {"prompt", "chosen", "rejected"},
    "tiny/ranked.jsonl": {"prompt", "responses"},
    "tiny/prompts.jsonl": {"prompt"},
    "sft_en.jsonl": {"prompt", "response"},
    "hh/hh_harmless_test.jsonl.gz": {"chosen", "rejected"},
    "imdb/reviews_train.jsonl.gz": {"text", "rating", "label", "id"},
    "imdb/reviews_test.jsonl.gz": {"text", "rating", "label", "id"},
    "imdb/openings_train.jsonl": {"prompt"},
    "imdb/openings_test.jsonl": {"prompt"},
}


def read_rows(name: str) -> list[dict]:
    path = DATA / name
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", sorted(BUNDLED_ROWS))
def test_bundled_file_parses_with_documented_count_and_keys(name):
    rows = read_rows(name)
    assert len(rows) == BUNDLED_ROWS[name]
    for row in rows:
        assert set(row) == ROW_KEYS[name]
        for key in ROW_KEYS[name] - {"rating", "label", "responses"}:
            assert isinstance(row[key], str) and (row[key] or key == "prompt")


def test_bundled_files_match_sha256sums_and_provenance():
    provenance = (DATA / "PROVENANCE.md").read_text(encoding="utf-8")
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    listed = (DATA / "SHA256SUMS").read_text().splitlines()
    assert len(listed) >= len(BUNDLED_ROWS)
    for line in listed:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, f"{name}: rerun the build script"
        assert name in provenance, f"{name} has no provenance entry"
    for name, count in BUNDLED_ROWS.items():
        assert name in readme and f"{count:,}" in readme
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < 12 * 2**20


def test_tiny_files_are_short():
    for name in ("tiny/sft.jsonl", "tiny/pairs.jsonl", "tiny/prompts.jsonl"):
        assert all(len(json.dumps(row)) < 400 for row in read_rows(name))
    ranked = read_rows("tiny/ranked.jsonl")
    assert Counter(len(row["responses"]) for row in ranked) == {3: 16, 4: 16}
    assert all(len(t) <= 200 for row in ranked for t in row["responses"])
    pairs = read_rows("tiny/pairs.jsonl")
    assert all(p["chosen"] != p["rejected"] for p in pairs)


def test_bundled_imdb_reviews_clean_balanced_disjoint():
    train, test = load_reviews(DATA / "imdb/reviews_train.jsonl.gz"), load_reviews(DATA / "imdb/reviews_test.jsonl.gz")
    assert Counter(r["rating"] for r in train) == {r: 750 for r in RATINGS}
    assert Counter(r["rating"] for r in test) == {r: 375 for r in RATINGS}
    raw_test = read_rows("imdb/reviews_test.jsonl.gz")
    assert [r["text"] for r in raw_test] == [r["text"] for r in test]  # stored already clean
    for split, rows in (("train", train), ("test", test)):
        assert all(r["id"].startswith(f"{split}/") for r in rows)
        assert all(r["label"] == int(r["rating"] >= 7) for r in rows)
        assert all("<br" not in r["text"] for r in rows)
    texts = [r["text"] for r in train + test]
    assert len(texts) == len(set(texts))  # de-duplicated, and no test review is also a train review
    openings = {row["prompt"] for row in read_rows("imdb/openings_test.jsonl")}
    assert all(len(p.split()) <= 8 for p in openings)


def test_bundled_test_split_gives_enough_held_out_pairs_and_lists():
    test = load_reviews(DATA / "imdb/reviews_test.jsonl.gz")
    pairs = make_pairs(test, n=1000, seed=0, with_ratings=True)
    assert all(p["chosen_rating"] > p["rejected_rating"] for p in pairs)
    lists = make_ranked_lists(test, k=4, n=250, seed=0, with_ratings=True)
    assert all(row["ratings"] == sorted(set(row["ratings"]), reverse=True) for row in lists)


def test_bundled_hh_is_the_native_transcript_format_with_its_license():
    rows = read_rows("hh/hh_harmless_test.jsonl.gz")
    assert all(r["chosen"].startswith("\n\nHuman:") and "\n\nAssistant:" in r["rejected"] for r in rows)
    assert "MIT License" in (DATA / "hh/LICENSE").read_text()

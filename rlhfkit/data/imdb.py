"""IMDB reviews -> preference pairs, ranked lists and prompt pools. Pure python (stdlib only).

The Large Movie Review Dataset (Maas et al., ACL 2011) gives every review the 1-10 star rating its
author chose: 1-4 is negative, 7-10 positive, 5 and 6 are absent. The ratings order the reviews, so
they give real human preference pairs and ranked lists with K > 2 for the ranking loss of
InstructGPT (Ouyang et al. 2022, eq. 1) without any labeller.

Rows produced (the toolkit's JSONL formats):
  pairs          {"prompt": str, "chosen": str, "rejected": str}
  ranked lists   {"prompt": str, "responses": [best, ..., worst]}
  prompt pools   {"prompt": str}

Rules every builder keeps (pinned in tests/data/test_imdb_builder.py):
  * never a tie: the reviews of one pair or list have distinct ratings, best first;
  * never the same review twice inside one pair or list (distinct ratings imply it);
  * by default no review is used twice across the rows of one call either (``reuse=False``), so
    that rows drawn from a held-out split are independent; ``reuse=True`` samples across rows with
    replacement when more rows are wanted than the reviews allow;
  * deterministic given ``seed`` and the order of ``reviews``.

Bundled review files: data/imdb/reviews_{train,test}.jsonl.gz (see data/PROVENANCE.md), rows
{"id", "text", "rating", "label"} with ``<br />`` already stripped.
"""
from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from typing import Iterable, Sequence

POSITIVE_MIN_RATING = 7  # aclImdb README: positive >= 7 of 10
NEGATIVE_MAX_RATING = 4  # negative <= 4; 5 and 6 are not in the labelled splits

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Replace the ``<br />`` line breaks of the raw aclImdb text by spaces and collapse whitespace.

    Idempotent, so it is safe on text that was already cleaned.
    """
    return _SPACES.sub(" ", _BR.sub(" ", text)).strip()


def truncate(text: str, max_chars: int | None) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, at a word boundary.

    ``None`` keeps the text whole. A first word longer than ``max_chars`` is cut mid-word (the only
    case where the boundary cannot be kept).
    """
    if max_chars is None or len(text) <= max_chars:
        return text
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1 or None, got {max_chars}")
    # Look one character past the limit: a space exactly there means text[:max_chars] ends a word.
    cut = text.rfind(" ", 0, max_chars + 1)
    if cut <= 0:
        return text[:max_chars]
    return text[:cut].rstrip()


def load_reviews(path: str | Path) -> list[dict]:
    """Read review rows ``{"id", "text", "rating", "label"}`` from a .jsonl or .jsonl.gz file.

    Works on the bundled subsets and on the raw ../shared/data/sentiment_en/imdb files: ``text`` goes
    through :func:`clean_text` either way, and ``label`` is derived from ``rating`` when absent.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    reviews = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("text"), str) or not isinstance(row.get("rating"), int):
                raise ValueError(f"{path}:{line_no}: a review needs a str 'text' and an int 'rating'")
            rating = row["rating"]
            reviews.append({
                "id": row.get("id", f"{path.name}:{line_no}"),
                "text": clean_text(row["text"]),
                "rating": rating,
                "label": row.get("label", int(rating >= POSITIVE_MIN_RATING)),
            })
    return reviews


def make_pairs(
    reviews: Sequence[dict],
    n: int,
    seed: int,
    prompt: str = "",
    min_rating_gap: int = 1,
    cross_label: bool = True,
    max_chars: int | None = None,
    reuse: bool = False,
    with_ratings: bool = False,
) -> list[dict]:
    """Draw ``n`` preference pairs; ``chosen`` always has the strictly higher rating.

    Default pairs a positive review (rating >= 7) with a negative one (rating <= 4): the two sides
    of the dataset's own label split, so every pair holds a gap of at least 3 stars and matches the
    binary sentiment task; 7-vs-8-star pairs are noisy and left out. ``cross_label=False`` allows
    any two reviews whose ratings differ by at least ``min_rating_gap`` (>= 1: no ties).

    Each pair first picks a (higher, lower) rating pair with probability proportional to the number
    of review pairs left for it, i.e. uniformly over the review pairs still possible.

    Args:
        prompt: the same prompt on every row ("" for prompt-free reward modelling, or e.g.
            "Write a movie review:").
        max_chars: truncate both reviews at a word boundary (see :func:`truncate`).
        reuse: False draws without replacement across rows (no review in two pairs) and raises
            ValueError if ``n`` pairs cannot be formed; True draws with replacement.
        with_ratings: also return "chosen_rating" and "rejected_rating" on each row.
    """
    _check_n(n)
    if min_rating_gap < 1:
        raise ValueError(f"min_rating_gap must be >= 1 (ties are never allowed), got {min_rating_gap}")
    rng = random.Random(seed)
    buckets = _buckets_by_rating(reviews, rng)
    rating_pairs = [
        (hi, lo) for hi in buckets for lo in buckets
        if hi - lo >= min_rating_gap
        and (not cross_label or (hi >= POSITIVE_MIN_RATING and lo <= NEGATIVE_MAX_RATING))
    ]
    rows = []
    for _ in range(n):
        weights = [len(buckets[hi]) * len(buckets[lo]) for hi, lo in rating_pairs]
        if sum(weights) == 0:
            raise ValueError(
                f"only {len(rows)} pairs can be formed from {len(reviews)} reviews "
                f"(min_rating_gap={min_rating_gap}, cross_label={cross_label}, reuse={reuse}); asked for {n}"
            )
        hi, lo = rng.choices(rating_pairs, weights)[0]
        chosen, rejected = _take(buckets[hi], rng, reuse), _take(buckets[lo], rng, reuse)
        row = {"prompt": prompt, "chosen": truncate(chosen["text"], max_chars),
               "rejected": truncate(rejected["text"], max_chars)}
        if with_ratings:
            row.update(chosen_rating=hi, rejected_rating=lo)
        rows.append(row)
    return rows


def make_ranked_lists(
    reviews: Sequence[dict],
    k: int,
    n: int,
    seed: int,
    prompt: str = "",
    max_chars: int | None = None,
    reuse: bool = False,
    with_ratings: bool = False,
) -> list[dict]:
    """Draw ``n`` lists of ``k`` reviews with distinct ratings, ordered best -> worst.

    The ``k`` ratings of a list are drawn without replacement, each with probability proportional to
    the reviews left at that rating, which keeps the buckets level and so maximises how many lists
    the reviews give. With the 8 IMDB ratings, ``k`` can be at most 8.

    Args:
        prompt, max_chars, reuse: as in :func:`make_pairs`.
        with_ratings: also return "ratings" (strictly decreasing) on each row.
    """
    _check_n(n)
    if k < 2:
        raise ValueError(f"k must be >= 2 (a ranked list needs at least two responses), got {k}")
    rng = random.Random(seed)
    buckets = _buckets_by_rating(reviews, rng)
    rows = []
    for _ in range(n):
        left = [r for r in buckets if buckets[r]]
        if len(left) < k:
            raise ValueError(
                f"only {len(rows)} lists of {k} distinct ratings can be formed from {len(reviews)} "
                f"reviews (reuse={reuse}); asked for {n}"
            )
        ratings = []
        for _ in range(k):
            r = rng.choices(left, [len(buckets[x]) for x in left])[0]
            left.remove(r)
            ratings.append(r)
        ratings.sort(reverse=True)
        row = {"prompt": prompt,
               "responses": [truncate(_take(buckets[r], rng, reuse)["text"], max_chars) for r in ratings]}
        if with_ratings:
            row["ratings"] = ratings
        rows.append(row)
    return rows


def make_openings(reviews: Iterable[dict], n_words: int = 8) -> list[dict]:
    """Prompt pool of review openings: ``{"prompt": first n_words words}``, one per review.

    Keeps the order of ``reviews`` and drops repeated openings. A review shorter than ``n_words``
    words gives its whole text.
    """
    if n_words < 1:
        raise ValueError(f"n_words must be >= 1, got {n_words}")
    seen, rows = set(), []
    for review in reviews:
        opening = " ".join(review["text"].split()[:n_words])
        if opening and opening not in seen:
            seen.add(opening)
            rows.append({"prompt": opening})
    return rows


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def _buckets_by_rating(reviews: Sequence[dict], rng: random.Random) -> dict[int, list[dict]]:
    """rating -> that rating's reviews in a seeded random order; keys ascending, so runs repeat."""
    buckets: dict[int, list[dict]] = {}
    for review in reviews:
        buckets.setdefault(review["rating"], []).append(review)
    buckets = {r: buckets[r] for r in sorted(buckets)}
    for bucket in buckets.values():
        rng.shuffle(bucket)
    return buckets


def _take(bucket: list[dict], rng: random.Random, reuse: bool) -> dict:
    # The bucket is already shuffled, so popping its end draws uniformly without replacement.
    return bucket[rng.randrange(len(bucket))] if reuse else bucket.pop()

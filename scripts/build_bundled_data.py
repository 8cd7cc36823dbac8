"""Build the small real data bundled in data/ from ../shared/data. A dev tool: nothing runs it at run time.

    python scripts/build_bundled_data.py [--shared ../shared/data] [--out data] [--seed 0]

Deterministic: every random choice comes from random.Random seeded with "<seed>/<file>", inputs are
read in a fixed order, and .gz files are written with mtime 0 and no file name, so a rerun writes
the same bytes (given the same zlib; the decompressed content is identical in any case). The inputs
are checked against ../shared/data/SHA256SUMS first; data/SHA256SUMS lists what this script wrote.
Sources, commits and licenses of every output: data/PROVENANCE.md. Formats and counts: data/README.md.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # use this checkout's rlhfkit even when it is not installed

from rlhfkit.data.imdb import clean_text, load_reviews, make_openings, make_pairs, make_ranked_lists  # noqa: E402

IMDB_TRAIN_PER_RATING = 750  # x 8 ratings = 6,000 reviews
IMDB_TEST_PER_RATING = 375   # x 8 = 3,000: 1,500 disjoint pos/neg pairs, up to 750 disjoint K=4 lists
N_OPENINGS_TRAIN, N_OPENINGS_TEST, OPENING_WORDS = 1000, 200, 8
SFT_EN_MAX_CHARS = 1500      # prompt + response, characters

UCI_SOURCES = {"imdb": "Movie", "amazon_cells": "Phone", "yelp": "Restaurant"}
TINY_SFT_PER_SOURCE_LABEL = 8      # 3 sources x 2 labels x 8 = 48 rows
TINY_PAIRS_PER_SOURCE = 16         # 3 x 16 = 48 rows
TINY_PROMPTS_PER_LABEL = 16        # 2 x 16 = 32 rows, from UCI imdb sentences
TINY_PROMPT_WORDS = 5
TINY_SENTENCE_CHARS = (20, 200)
TINY_RANKED = {3: 16, 4: 16}       # k -> lists; 32 rows
TINY_RANKED_MAX_CHARS = 200
TINY_RANKED_SOURCE_MAX_CHARS = 300  # only short reviews, so the cut text still carries the review's tone
TINY_REVIEW_PROMPT = "Movie review:"
# Reward-model / DPO sets (prompt-free). 400 characters are <= 126 SmolLM2 tokens for 8,994 of the
# 9,000 reviews, so review + BOS + EOS fits examples/rm_imdb.yaml's max_length 128 whole: the score
# is read at the EOS of text the model saw entirely, not where truncation happened to cut.
IMDB_RM_MAX_CHARS = 400
IMDB_RM_PAIRS = {"train": 3000, "test": 1000}  # train: all 3,000 pos/neg pairs, disjoint reviews
IMDB_RM_RANKED_TEST = (4, 250)  # k, lists
# The same pairs and lists with reviews cut at 1,000 characters (<= ~250 MiniLM tokens): the
# reward model of examples/rm_imdb.yaml sees more of each review (held-out pair accuracy 92.7%
# vs 88.6% at 400 characters, both after 200 steps x 16 pairs on all-MiniLM-L6-v2).
IMDB_RM_LONG_MAX_CHARS = 1000


# ---------------------------------------------------------------- io

def write_jsonl(rows: list[dict], path: Path) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
            f.write(text)
        text = buf.getvalue()
    path.write_bytes(text)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_inputs(shared: Path, names: list[str]) -> None:
    sums = {}
    for line in (shared / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.removeprefix("./")] = digest
    for name in names:
        if sha256(shared / name) != sums[name]:
            raise SystemExit(f"{shared / name} does not match {shared / 'SHA256SUMS'}: not the recorded input")


# ---------------------------------------------------------------- tiny examples (UCI sentences + IMDB)

def read_uci(path: Path) -> dict[int, list[str]]:
    """label -> distinct sentences of 20..200 characters, in file order."""
    by_label: dict[int, list[str]] = {0: [], 1: []}
    seen = set()
    # split("\n"), not splitlines(): imdb_labelled.txt has U+0085 (NEL) inside sentences.
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        sentence, label = line.rsplit("\t", 1)
        # U+0085 there is a Windows-1252 ellipsis read as Latin-1; put the ellipsis back.
        sentence = re.sub(r"\s+", " ", sentence.replace("\x85", "...")).strip()
        lo, hi = TINY_SENTENCE_CHARS
        if lo <= len(sentence) <= hi and sentence not in seen:
            seen.add(sentence)
            by_label[int(label)].append(sentence)
    return by_label


def build_tiny_uci(shared: Path, out: Path, seed: int) -> None:
    sft, pairs, prompts = [], [], []
    for source, kind in UCI_SOURCES.items():
        by_label = read_uci(shared / f"sentiment_en/uci_sentiment_labelled_sentences/{source}_labelled.txt")
        rng = random.Random(f"{seed}/tiny/{source}")
        for sentences in by_label.values():
            rng.shuffle(sentences)
        pos, neg = by_label[1], by_label[0]
        n = TINY_SFT_PER_SOURCE_LABEL
        sft += [{"prompt": f"Positive {kind.lower()} review:", "response": s} for s in pos[:n]]
        sft += [{"prompt": f"Negative {kind.lower()} review:", "response": s} for s in neg[:n]]
        m = TINY_PAIRS_PER_SOURCE
        pairs += [{"prompt": f"{kind} review:", "chosen": c, "rejected": r}
                  for c, r in zip(pos[n:n + m], neg[n:n + m])]
        if source == "imdb":  # prompt pool: openings of sentences used in neither file above
            for sentences in (pos[n + m:], neg[n + m:]):
                long_enough = [s for s in sentences if len(s.split()) >= TINY_PROMPT_WORDS + 3]
                prompts += [{"prompt": " ".join(s.split()[:TINY_PROMPT_WORDS])}
                            for s in long_enough[:TINY_PROMPTS_PER_LABEL]]
    rng = random.Random(f"{seed}/tiny/order")
    for name, rows in (("sft", sft), ("pairs", pairs), ("prompts", prompts)):
        rng.shuffle(rows)
        write_jsonl(rows, out / f"tiny/{name}.jsonl")
    shutil.copyfile(shared / "sentiment_en/uci_sentiment_labelled_sentences/readme.txt", out / "tiny/uci_readme.txt")
    build_tiny_kto(pairs, out, seed)


def build_tiny_kto(pairs: list[dict], out: Path, seed: int) -> None:
    """KTO's unpaired rows: each tiny pair's chosen (label true) and rejected (label false), shuffled."""
    rows = [{"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
            for pair in pairs for side in ("chosen", "rejected")]
    random.Random(seed).shuffle(rows)
    write_jsonl(rows, out / "tiny/kto.jsonl")


def build_tiny_ranked(short_reviews: list[dict], out: Path, seed: int) -> None:
    """Lists of short IMDB reviews of distinct ratings, cut at 200 characters; k = 3 and 4 mixed."""
    rows, start = [], 0
    for k, n in TINY_RANKED.items():
        part = short_reviews[start:start + len(short_reviews) // len(TINY_RANKED)]  # disjoint reviews per k
        start += len(part)
        rows += make_ranked_lists(part, k=k, n=n, seed=seed, prompt=TINY_REVIEW_PROMPT,
                                  max_chars=TINY_RANKED_MAX_CHARS)
    random.Random(f"{seed}/tiny/ranked").shuffle(rows)
    write_jsonl(rows, out / "tiny/ranked.jsonl")


# ---------------------------------------------------------------- SFT set for SmolLM2 (LLaMA-Factory demo)

def build_sft_en(shared: Path, out: Path) -> None:
    """Single-turn rows of dpo_en_demo.json: prompt = [system + blank line +] human turn, response = chosen.

    Multi-turn rows are dropped: their later human turns need the earlier assistant turns, which a
    {"prompt", "response"} row cannot hold (and almost none fit in 1,500 characters anyway).
    """
    rows = []
    for ex in json.loads((shared / "preference/llamafactory_dpo_en_demo.json").read_text(encoding="utf-8")):
        turns = ex["conversations"]
        roles = tuple(t["from"] for t in turns)
        if roles not in (("human",), ("system", "human")):
            continue
        prompt = "\n\n".join(t["value"].strip() for t in turns)
        response = ex["chosen"]["value"].strip()
        if prompt and response and len(prompt) + len(response) <= SFT_EN_MAX_CHARS:
            rows.append({"prompt": prompt, "response": response})
    write_jsonl(rows, out / "sft_en.jsonl")
    shutil.copyfile("/usr/share/common-licenses/Apache-2.0", out / "sft_en.LICENSE-Apache-2.0.txt")


# ---------------------------------------------------------------- Anthropic HH harmless-base test, as is

def build_hh(shared: Path, out: Path) -> None:
    (out / "hh").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / "preference/hh-rlhf_harmless-base_test.jsonl.gz", out / "hh/hh_harmless_test.jsonl.gz")
    shutil.copyfile(shared / "preference/hh-rlhf_LICENSE.txt", out / "hh/LICENSE")


# ---------------------------------------------------------------- IMDB subsets

def split_imdb(shared: Path, seed: int) -> dict[str, tuple[list[dict], list[dict]]]:
    """split -> (balanced subset, rest in a seeded order); texts cleaned, duplicates removed.

    A text that occurs more than once anywhere in train + test (98 + 201 repeats inside the splits,
    123 shared between them) is dropped with all its copies, so no text appears twice in the bundle.
    """
    raw = {split: load_reviews(shared / f"sentiment_en/imdb/imdb_{split}.jsonl.gz") for split in ("train", "test")}
    counts = Counter(r["text"] for reviews in raw.values() for r in reviews)
    result = {}
    for split, per_rating in (("train", IMDB_TRAIN_PER_RATING), ("test", IMDB_TEST_PER_RATING)):
        rng = random.Random(f"{seed}/imdb/{split}")
        unique = sorted((r for r in raw[split] if counts[r["text"]] == 1), key=lambda r: r["id"])
        subset, rest = [], []
        for rating in sorted({r["rating"] for r in unique}):
            bucket = [r for r in unique if r["rating"] == rating]
            rng.shuffle(bucket)
            subset += bucket[:per_rating]
            rest += bucket[per_rating:]
        rng.shuffle(subset)
        rng.shuffle(rest)
        result[split] = (subset, rest)
    return result


def build_imdb(shared: Path, out: Path, seed: int) -> list[dict]:
    """Writes data/imdb/*; returns the short train reviews left over, for the tiny ranked lists."""
    splits = split_imdb(shared, seed)
    for split, (subset, rest) in splits.items():
        write_jsonl([{"text": r["text"], "rating": r["rating"], "label": r["label"], "id": r["id"]} for r in subset],
                    out / f"imdb/reviews_{split}.jsonl.gz")
        n_open = N_OPENINGS_TRAIN if split == "train" else N_OPENINGS_TEST
        # Openings come from reviews outside the subset: prompt pools and pairs never share a review.
        openings = make_openings(rest, n_words=OPENING_WORDS)[:n_open]
        write_jsonl(openings, out / f"imdb/openings_{split}.jsonl")
    shutil.copyfile(shared / "sentiment_en/imdb/aclImdb_README.txt", out / "imdb/aclImdb_README.txt")
    build_imdb_rm(splits["train"][0], splits["test"][0], out, seed)
    train_rest = splits["train"][1][N_OPENINGS_TRAIN * 2:]  # well past the openings' reviews
    return [r for r in train_rest if len(r["text"]) <= TINY_RANKED_SOURCE_MAX_CHARS]


def build_imdb_rm(train: list[dict], test: list[dict], out: Path, seed: int) -> None:
    """Prompt-free positive (>= 7 stars) vs negative (<= 4) pairs, reviews cut at a word boundary
    to IMDB_RM_MAX_CHARS, no review in two pairs of one file; K=4 held-out lists of distinct
    ratings. The test files both draw from reviews_test (each is an independent eval set)."""
    for split, reviews in (("train", train), ("test", test)):
        rows = make_pairs(reviews, n=IMDB_RM_PAIRS[split], seed=f"{seed}/imdb/pairs_{split}",
                          max_chars=IMDB_RM_MAX_CHARS)
        write_jsonl(rows, out / f"imdb/pairs_{split}.jsonl.gz")
    k, n = IMDB_RM_RANKED_TEST
    rows = make_ranked_lists(test, k=k, n=n, seed=f"{seed}/imdb/ranked{k}_test", max_chars=IMDB_RM_MAX_CHARS)
    write_jsonl(rows, out / f"imdb/ranked{k}_test.jsonl.gz")
    # Long variants: the same seeds, so the same reviews in the same pairs and lists, cut later.
    for split, reviews in (("train", train), ("test", test)):
        rows = make_pairs(reviews, n=IMDB_RM_PAIRS[split], seed=f"{seed}/imdb/pairs_{split}",
                          max_chars=IMDB_RM_LONG_MAX_CHARS)
        write_jsonl(rows, out / f"imdb/pairs_long_{split}.jsonl.gz")
    rows = make_ranked_lists(test, k=k, n=n, seed=f"{seed}/imdb/ranked{k}_test", max_chars=IMDB_RM_LONG_MAX_CHARS)
    write_jsonl(rows, out / f"imdb/ranked{k}_long_test.jsonl.gz")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared/data", help="the shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "data", help="where to write (the repo's data/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args()
    shared, out = args.shared.resolve(), args.out.resolve()
    check_inputs(shared, [
        "preference/hh-rlhf_LICENSE.txt", "preference/hh-rlhf_harmless-base_test.jsonl.gz",
        "preference/llamafactory_dpo_en_demo.json", "sentiment_en/imdb/aclImdb_README.txt",
        "sentiment_en/imdb/imdb_train.jsonl.gz", "sentiment_en/imdb/imdb_test.jsonl.gz",
        *(f"sentiment_en/uci_sentiment_labelled_sentences/{s}_labelled.txt" for s in UCI_SOURCES),
        "sentiment_en/uci_sentiment_labelled_sentences/readme.txt",
    ])
    short_reviews = build_imdb(shared, out, args.seed)
    build_tiny_ranked(short_reviews, out, args.seed)
    build_tiny_uci(shared, out, args.seed)
    build_sft_en(shared, out)
    build_hh(shared, out)

    # a folder with its own SHA256SUMS was written by another builder (sentiment_zh: build_sentiment_zh.py)
    others = [sums.parent for sums in out.glob("*/**/SHA256SUMS")]
    written = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in {"SHA256SUMS", "README.md", "PROVENANCE.md"}
                     and not any(p.is_relative_to(folder) for folder in others))
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(out).as_posix()}\n" for p in written))
    total = 0
    for p in written:
        size = p.stat().st_size
        total += size
        opener = gzip.open if p.suffix == ".gz" else open
        rows = sum(1 for _ in opener(p, "rt", encoding="utf-8")) if ".jsonl" in p.name else "-"
        print(f"{p.relative_to(out).as_posix():40s} {rows!s:>6} rows {size:>10,} bytes")
    print(f"{'total':40s} {'':>11} {total:>10,} bytes")


if __name__ == "__main__":
    main()

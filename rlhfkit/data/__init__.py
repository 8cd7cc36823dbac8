"""Data: readers (local files, Hub data sets), row formats, tokenisation, deterministic
batching. The accepted sources and row schemas: docs/data.md."""
from __future__ import annotations

import random

from rlhfkit.data.formats import (
    PARSERS,
    PromptExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
    parse_prompt,
    parse_ranked,
    parse_sft,
    parse_unpaired,
)
from rlhfkit.data.readers import DataError, Record, read_records, records_from_rows
from rlhfkit.data.tokenize import (
    Encoded,
    SequenceBatch,
    collate_sequences,
    encode,
    left_pad,
    render_prompt,
)


def load_examples(path: str, kind: str, max_rows: int = 0, split: str = "train",
                  subset: str = "") -> list:
    """Parse every row of ``path`` as ``kind`` ('sft', 'ranked', 'prompt' or 'unpaired');
    ``split``/``subset`` pick the part of a Hub data set (see readers.read_records)."""
    records = read_records(path, split, subset)
    if max_rows:
        records = records[:max_rows]
    if not records:
        raise DataError(f"{path}: no rows")
    return [PARSERS[kind](record) for record in records]


def _parse_rows(rows, source: str, kind: str) -> list:
    records = records_from_rows(rows, source)
    if not records:
        raise DataError(f"{source}: no rows")
    return [PARSERS[kind](record) for record in records]


def train_eval_split(examples: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic shuffle-then-split: the held-out rows depend only on the seed."""
    if eval_fraction <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(examples) * eval_fraction)))
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def load_splits(data_config, kind: str, seed: int, train_rows=None, eval_rows=None
                ) -> tuple[list, list]:
    """Train and eval examples from a DataConfig (eval file or Hub split, or a held-out split
    of train). ``train_rows``/``eval_rows``: rows in memory (a ``datasets.Dataset`` or a list
    of dicts, the Python API's train_dataset/eval_dataset) read in place of data.train_path /
    data.eval_path, parsed and split the same way; errors name them 'train_dataset:N'."""
    if train_rows is not None:
        train = _parse_rows(train_rows, "train_dataset", kind)
    elif not data_config.train_path:
        raise DataError("data.train_path is empty: set it in the config or as "
                        "data.train_path=FILE")
    else:
        train = load_examples(data_config.train_path, kind, split=data_config.split,
                              subset=data_config.subset)
    if eval_rows is not None:
        evaluation = _parse_rows(eval_rows, "eval_dataset", kind)
    elif data_config.eval_path:
        evaluation = load_examples(data_config.eval_path, kind, split=data_config.eval_split,
                                   subset=data_config.subset)
    else:
        train, evaluation = train_eval_split(train, data_config.eval_fraction, seed)
    if data_config.max_rows:
        train = train[:data_config.max_rows]
    if data_config.max_eval_rows:
        evaluation = evaluation[:data_config.max_eval_rows]
    return train, evaluation


__all__ = [
    "DataError", "Record", "read_records", "records_from_rows", "SFTExample", "RankedExample",
    "PromptExample", "UnpairedExample", "parse_sft", "parse_ranked", "parse_prompt",
    "parse_unpaired", "Encoded", "SequenceBatch", "encode",
    "collate_sequences", "left_pad", "render_prompt", "load_examples", "train_eval_split",
    "load_splits",
]

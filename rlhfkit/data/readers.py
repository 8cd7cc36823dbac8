"""Read rows from local files, remembering where each came from (file, line) for error messages.

Formats: .jsonl, .json (a list of objects, or {"data": [...]}), either gzipped, and folders
written by ``datasets.Dataset.save_to_disk``. Nothing is ever downloaded.
Tests: tests/data/test_data.py.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A data file or row that does not have the expected shape."""


@dataclass(frozen=True)
class Record:
    source: str  # file path
    line: int    # 1-based line (JSONL) or record number (JSON list, datasets folder)
    row: dict

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    with _open_text(path) as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg} at column "
                                f"{err.colno}); expected one JSON object per line") from None
            records.append(Record(str(path), number, row))
    return records


def _read_json(path: Path) -> list[Record]:
    with _open_text(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    return [Record(str(path), number, row) for number, row in enumerate(data, start=1)]


def _read_datasets_folder(path: Path) -> list[Record]:
    from datasets import load_from_disk

    dataset = load_from_disk(str(path))
    if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):
        raise DataError(f"{path}: a DatasetDict; point at one split folder, e.g. {path}/train")
    return [Record(str(path), number, dict(row)) for number, row in enumerate(dataset, start=1)]


def read_records(path: str) -> list[Record]:
    """All rows of a local data file or datasets folder, each with its file and line."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {path}")
    if p.is_dir():
        return _read_datasets_folder(p)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    if name.endswith(".jsonl"):
        records = _read_jsonl(p)
    elif name.endswith(".json"):
        records = _read_json(p)
    else:
        raise DataError(f"{path}: unsupported file type; expected .jsonl, .json, .jsonl.gz, "
                        ".json.gz or a datasets folder")
    for record in records:
        if not isinstance(record.row, dict):
            raise DataError(f"{record.where()}: expected a JSON object, got "
                            f"{type(record.row).__name__}")
    return records

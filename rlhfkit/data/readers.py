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


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, un-gzipped for .gz; a broken gzip stream is a DataError."""
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError; EOFError: cut short
        raise DataError(f"{path}: not a valid gzip file ({err}); expected gzip-compressed "
                        "JSON or JSONL") from None


def _decode(data: bytes, path: Path, first_line: int = 1) -> str:
    """UTF-8 text, or a DataError naming the file, the line and the byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at "
                        f"column {column}); expected UTF-8 text") from None


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    for number, raw in enumerate(_read_bytes(path).splitlines(), start=1):
        text = _decode(raw, path, number)
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
    try:
        data = json.loads(_decode(_read_bytes(path), path))
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

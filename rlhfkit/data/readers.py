"""Read rows, remembering where each came from (file, line) for error messages.

Sources: .jsonl, .json (a list of objects, or {"data": [...]}), either gzipped; folders written
by ``datasets.Dataset.save_to_disk``; any other folder is read as a Hub data set repository
(README.md ``configs`` header, data/*.parquet|jsonl|csv…) and a path that is no local file or
folder as a Hub data set name (``owner/name``), both through ``datasets.load_dataset`` with a
split and subset (``data.split``, ``data.subset``). The datasets library's offline switch
(``HF_DATASETS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) is left to it: offline, a name loads only
from the datasets cache (``HF_DATASETS_CACHE``) an earlier online load filled.
A Hub row's line is its 1-based row number in the split: ``owner/name[train]:12``.
Tests: tests/data/test_data.py, tests/data/test_readers.py, tests/data/test_hub.py.
"""
from __future__ import annotations

import gzip
import json
import re
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


# A Hub repository id: "name" or "owner/name" (letters, digits, "-", "_", "."), no file suffix.
_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_FILE_SUFFIXES = (".json", ".jsonl", ".gz", ".parquet", ".csv", ".arrow", ".txt")


def is_saved_dataset(path: Path) -> bool:
    """A folder ``save_to_disk`` wrote (a Dataset, or a DatasetDict of them)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def records_from_rows(rows, source: str) -> list[Record]:
    """Rows in memory (a ``datasets.Dataset`` or a list of dicts) as Records numbered from 1."""
    rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
    records = [Record(source, number, row) for number, row in enumerate(rows, start=1)]
    for record in records:
        if not isinstance(record.row, dict):
            raise DataError(f"{record.where()}: expected a row mapping column names to values, "
                            f"got {type(record.row).__name__}")
    return records


def _read_hub(path: str, split: str, subset: str) -> list[Record]:
    """A Hub data set (name, or a local folder laid out as its repository) via load_dataset."""
    import datasets

    try:
        dataset = datasets.load_dataset(path, subset or None, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        # OSError covers FileNotFoundError (no such repo, no data files) and ConnectionError
        # (offline, or no network); ValueError an unknown split or subset.
        reason = " ".join(str(err).split()) or type(err).__name__
        offline = (" (offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set, so a Hub name loads "
                   "only from the datasets cache, HF_DATASETS_CACHE)"
                   if datasets.config.HF_HUB_OFFLINE and not Path(path).is_dir() else "")
        what = "a Hub data set folder" if Path(path).is_dir() else \
            "not a local file or folder, and as a Hub data set name"
        part = f"split {split!r}" + (f", subset {subset!r}" if subset else "")
        raise DataError(f"{path}: {what} ({part}): {reason}{offline}") from None
    name = f"{path}[{subset + '/' if subset else ''}{split}]"
    return records_from_rows(dataset, name)


def read_records(path: str, split: str = "train", subset: str = "") -> list[Record]:
    """All rows of a local data file, datasets folder or Hub data set, each with its source and
    line (row number for data sets). ``split`` and ``subset`` apply to Hub data sets only."""
    p = Path(path)
    if p.is_dir() and not is_saved_dataset(p):
        return _read_hub(path, split, subset)
    if not p.exists():
        if _REPO_ID.fullmatch(path) and not path.lower().endswith(_FILE_SUFFIXES):
            return _read_hub(path, split, subset)
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

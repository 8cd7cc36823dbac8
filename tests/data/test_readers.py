"""rlhfkit/data/readers.py: a file that is not UTF-8 (or not gzip) is a DataError naming
file:line, never a UnicodeDecodeError. The CLI side: tests/e2e/test_cli_errors.py."""
import gzip

import pytest

from rlhfkit.data import DataError, read_records


def test_jsonl_names_the_line_and_byte_that_is_not_utf8(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=rf"^{path}:3: not valid UTF-8 \(byte 0xff at column "
                                        r"13\); expected UTF-8 text$"):
        read_records(str(path))


def test_gzipped_json_list_names_the_line(tmp_path):
    path = tmp_path / "x.json.gz"
    path.write_bytes(gzip.compress(b'[\n{"prompt": "a"},\n{"prompt": "caf\xe9"}\n]\n'))
    with pytest.raises(DataError, match=rf"^{path}:3: not valid UTF-8 \(byte 0xe9"):
        read_records(str(path))


def test_a_gz_file_that_is_not_gzip(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(b'{"prompt": "a"}\n')
    with pytest.raises(DataError, match=rf"^{path}: not a valid gzip file"):
        read_records(str(path))


def test_utf8_rows_and_line_numbers_unchanged(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress('{"prompt": "café"}\r\n\n{"prompt": "b"}\n'.encode()))
    records = read_records(str(path))
    assert [(r.line, r.row["prompt"]) for r in records] == [(1, "café"), (3, "b")]

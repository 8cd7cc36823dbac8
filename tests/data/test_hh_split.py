"""HH pairs whose replies contain a turn marker: the prompt is the dialogue both transcripts share.

Five rows of the bundled harmless-base test set are like this; before the fallback in
rlhfkit.data.formats.split_hh_common they stopped any run that read the file.
"""
import json

import pytest

from rlhfkit.data import DataError, load_examples


def _rows(tmp_path, rows):
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_reply_with_extra_turn_splits_at_shared_assistant(tmp_path):
    # The rejected reply runs on into a made-up "Human:" turn and a second "Assistant:" reply.
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine",
           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: eh"
                       "\n\nHuman: what?\n\nAssistant: go away"}
    (example,) = load_examples(_rows(tmp_path, [row]), "ranked")
    assert example.messages == (("user", "hi"), ("assistant", "hello"), ("user", "how?"))
    assert example.chosen == "fine"
    assert example.rejected == "eh\n\nHuman: what?\n\nAssistant: go away"


def test_different_dialogues_still_fail(tmp_path):
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: yo\n\nAssistant: "
           "b\n\nHuman: c\n\nAssistant: d"}
    with pytest.raises(DataError, match="hh.jsonl:1: HH transcripts"):
        load_examples(_rows(tmp_path, [row]), "ranked")


def test_bundled_hh_file_parses(repo_root):
    examples = load_examples(str(repo_root / "data/hh/hh_harmless_test.jsonl.gz"), "ranked")
    assert len(examples) == 2312

"""Readers, row formats, malformed-row errors, tokenisation (rlhfkit/data)."""
import gzip
import json

import pytest

from rlhfkit.data import (
    DataError,
    collate_sequences,
    encode,
    left_pad,
    load_examples,
    read_records,
    render_prompt,
    train_eval_split,
)


def write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return str(path)


def test_reads_jsonl_gz_json_and_datasets_folder(tmp_path):
    rows = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
    jsonl = write_jsonl(tmp_path / "a.jsonl.gz", rows, gz=True)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    from datasets import Dataset
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "folder"))
    for path in (jsonl, str(tmp_path / "b.json"), str(tmp_path / "folder")):
        examples = load_examples(path, "sft")
        assert [e.response for e in examples] == ["r1", "r2"]
        assert examples[0].messages == (("user", "p1"),)


def test_pair_ranked_hh_and_sharegpt_formats(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "responses": ["best", "mid", "worst"]},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"},
        {"conversations": [{"from": "human", "value": "q2"}],
         "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"}},
    ])
    pair, ranked, hh, sharegpt = load_examples(path, "ranked")
    assert pair.responses == ("good", "bad")
    assert ranked.responses == ("best", "mid", "worst") and ranked.ranks is None
    # HH: the shared prompt is everything up to the last "\n\nAssistant:"
    assert hh.messages == (("user", "hi"), ("assistant", "hello"), ("user", "how?"))
    assert (hh.chosen, hh.rejected) == ("fine", "go away")
    assert sharegpt.messages == (("user", "q2"),) and sharegpt.chosen == "yes"
    prompts = load_examples(path, "prompt")
    assert prompts[2].messages == hh.messages


def test_ranked_list_with_ties(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "q", "responses": ["best", "mid a", "mid b", "worst"], "ranks": [1, 2, 2, 3]}])
    (example,) = load_examples(path, "ranked")
    assert example.ranks == (1, 2, 2, 3) and example.responses[1:3] == ("mid a", "mid b")


@pytest.mark.parametrize("row, kind, message", [
    ({"prompt": "q"}, "sft", "p.jsonl:2: missing field 'response'"),
    ({"prompt": "q", "response": 3}, "sft", "p.jsonl:2: field 'response': expected a non-empty string, got int"),
    ({"prompt": "q", "chosen": "a"}, "ranked", "p.jsonl:2: missing field 'rejected'"),
    ({"prompt": "q", "responses": ["only"]}, "ranked", "p.jsonl:2: field 'responses': expected a list of ≥ 2"),
    ({"prompt": "q", "responses": ["a", "b", "a"]}, "ranked", "p.jsonl:2: tie"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "ranked", "p.jsonl:2: tie"),
    ({"chosen": "no assistant turn", "rejected": "x"}, "ranked", "expected an HH transcript"),
    ({"conversations": [{"from": "alien", "value": "x"}], "chosen": {}, "rejected": {}}, "ranked",
     "field 'conversations': expected a turn"),
    ({"text": "x"}, "ranked", "p.jsonl:2: expected a preference row"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [2, 1]}, "ranked", "field 'ranks'"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, 1]}, "ranked", "field 'ranks'"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranks": [1, 2]}, "ranked", "field 'ranks'"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [0, 1]}, "ranked", "field 'ranks'"),
    ({"text": "x"}, "prompt", "p.jsonl:2: missing field 'prompt'"),
])
def test_malformed_row_names_file_line_field(tmp_path, row, kind, message):
    good = {"prompt": "q", "response": "r", "chosen": "c", "rejected": "d"}
    path = write_jsonl(tmp_path / "p.jsonl", [good, row])
    with pytest.raises(DataError) as err:
        load_examples(path, kind)
    assert message in str(err.value)


def test_invalid_json_line_and_missing_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_records(str(bad))
    with pytest.raises(DataError, match="data file not found"):
        read_records(str(tmp_path / "none.jsonl"))
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a,b")
        read_records(str(tmp_path / "x.csv"))


def test_cli_reports_data_error_without_traceback(tmp_path, capsys):
    from rlhfkit.cli import main

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "response": "r"}, {"prompt": "q"}])
    code = main(["sft", f"data.train_path={path}", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "d.jsonl:2: missing field 'response'" in err and "Traceback" not in err


def test_split_is_deterministic_and_disjoint():
    train, held = train_eval_split(list(range(20)), 0.25, seed=3)
    assert len(held) == 5 and not set(train) & set(held)
    assert train_eval_split(list(range(20)), 0.25, seed=3) == (train, held)


def test_chat_template_and_plain_rendering(tokenizer):
    messages = (("user", "hi"),)
    chat = render_prompt(messages, tokenizer, "auto")
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
    assert render_prompt(messages, tokenizer, "plain") == "hi"
    multi = render_prompt((("user", "a"), ("assistant", "b"), ("user", "c")), tokenizer, "plain")
    assert multi == "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"


def test_encode_truncates_and_appends_eos(tokenizer):
    encoded = encode(tokenizer, "one two three four five", "six seven", max_prompt_length=2,
                     max_length=4)
    assert len(encoded.prompt_ids) == 2  # cut from the left
    assert tokenizer.decode(encoded.prompt_ids).strip() == "four five"
    assert len(encoded.response_ids) == 2  # cut on the right
    full = encode(tokenizer, "a", "b", 8, 16)
    assert full.response_ids[-1] == tokenizer.eos_token_id


def test_collate_right_pads_with_response_mask(tokenizer):
    from rlhfkit.data import Encoded

    batch = collate_sequences([Encoded([1, 2], [3]), Encoded([4], [5, 6, 7])], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[True, True, True, False], [True] * 4]
    assert batch.response_mask.tolist() == [[False, False, True, False],
                                            [False, True, True, True]]
    ids, attention = left_pad([[1, 2], [3]], pad_id=0)
    assert ids.tolist() == [[1, 2], [0, 3]] and attention.tolist() == [[True, True], [False, True]]

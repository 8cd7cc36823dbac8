"""The schemas users bring, read without conversion (rlhfkit/data/formats.py): conversational
preference rows (UltraFeedback-binarized, TRL's explicit and implicit prompt), conversational
prompts and SFT rows, unpaired {"prompt", "completion", "label"} rows (KTO) — and the
file:line error each gives on malformed input."""
import json

import pytest

from rlhfkit.data import DataError, load_examples


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_ultrafeedback_binarized_row(tmp_path):
    """UltraFeedback-binarized: 'prompt' repeats the first user turn of chosen/rejected, which
    also carry 'messages' and scores; the pair is the two final assistant replies."""
    row = {"prompt": "Name a colour.", "prompt_id": "ab12",
           "chosen": [user("Name a colour."), assistant("Blue.")],
           "rejected": [user("Name a colour."), assistant("A car.")],
           "messages": [user("Name a colour."), assistant("Blue.")],
           "score_chosen": 8.0, "score_rejected": 3.0}
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    (example,) = load_examples(path, "ranked")
    assert example.messages == (("user", "Name a colour."),)
    assert example.responses == ("Blue.", "A car.") and example.ranks is None
    (prompt,) = load_examples(path, "prompt")
    assert prompt.messages == (("user", "Name a colour."),)
    (sft,) = load_examples(path, "sft")  # its "messages" column: the chosen conversation
    assert sft.messages == (("user", "Name a colour."),) and sft.response == "Blue."


def test_trl_conversational_explicit_and_implicit_prompt(tmp_path):
    """TRL's two conversational preference layouts give the same example; a multi-turn prompt
    with a system message keeps every turn, the replies are the last assistant messages."""
    explicit = {"prompt": [SYSTEM, user("hi"), assistant("hello"), user("how?")],
                "chosen": [assistant("fine")], "rejected": [assistant("go away")]}
    implicit = {"chosen": [SYSTEM, user("hi"), assistant("hello"), user("how?"), assistant("fine")],
                "rejected": [SYSTEM, user("hi"), assistant("hello"), user("how?"),
                             assistant("go away")]}
    repeated = dict(implicit, prompt=explicit["prompt"])  # prompt given and repeated in chosen
    path = write_jsonl(tmp_path / "trl.jsonl", [explicit, implicit, repeated])
    examples = load_examples(path, "ranked")
    messages = (("system", "Be brief."), ("user", "hi"), ("assistant", "hello"), ("user", "how?"))
    for example in examples:
        assert example.messages == messages and example.responses == ("fine", "go away")
    assert [p.messages for p in load_examples(path, "prompt")] == [messages] * 3


def test_prompt_only_and_sft_conversational_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [SYSTEM, user("Write a haiku.")]},
        {"messages": [user("a"), assistant("b"), user("c")]},
        {"messages": [user("a"), assistant("b"), user("c"), assistant("d")]},
    ])
    prompts = [e.messages for e in load_examples(path, "prompt")]
    assert prompts == [(("system", "Be brief."), ("user", "Write a haiku.")),
                       (("user", "a"), ("assistant", "b"), ("user", "c")),
                       (("user", "a"), ("assistant", "b"), ("user", "c"))]  # up to the last reply
    sft_path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [user("a"), assistant("b"), user("c"), assistant("d")]},
        {"prompt": [user("q")], "completion": [assistant("r")]},
        {"prompt": "q", "completion": "r"},
    ])
    sft = load_examples(sft_path, "sft")
    assert (sft[0].messages, sft[0].response) == (
        (("user", "a"), ("assistant", "b"), ("user", "c")), "d")
    assert [(e.messages, e.response) for e in sft[1:]] == [((("user", "q"),), "r")] * 2


def test_unpaired_rows_standard_and_conversational(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "q", "completion": "good", "label": True},
        {"prompt": [user("q")], "completion": [assistant("bad")], "label": False},
        {"prompt": "q", "completion": "ok", "label": 1},
    ])
    examples = load_examples(path, "unpaired")
    assert [(e.messages, e.completion, e.label) for e in examples] == [
        ((("user", "q"),), "good", True), ((("user", "q"),), "bad", False),
        ((("user", "q"),), "ok", True)]
    assert all(isinstance(e.label, bool) for e in examples)
    assert [e.messages for e in load_examples(path, "prompt")] == [(("user", "q"),)] * 3


GOOD = {"prompt": "q", "chosen": [assistant("c")], "rejected": [assistant("d")],
        "completion": "c", "label": True, "messages": [user("q"), assistant("r")]}


@pytest.mark.parametrize("row, kind, message", [
    ({"chosen": [user("q"), assistant("same")], "rejected": [user("q"), assistant("same")]},
     "ranked", "c.jsonl:2: tie"),
    ({"chosen": [user("q"), assistant("c")]}, "ranked", "c.jsonl:2: missing field 'rejected'"),
    ({"chosen": [user("q"), assistant("c")], "rejected": "d"}, "ranked",
     "c.jsonl:2: field 'rejected': expected a non-empty list of {\"role\", \"content\"} messages"),
    ({"chosen": [user("q"), {"role": "bot", "content": "c"}], "rejected": [user("q")]}, "ranked",
     "c.jsonl:2: field 'chosen', message 2: expected {\"role\": system|user|assistant"),
    ({"chosen": [user("q"), {"role": "assistant", "content": None}],
      "rejected": [user("q"), assistant("d")]}, "ranked", "c.jsonl:2: field 'chosen', message 2"),
    ({"chosen": [user("q"), assistant("c"), user("more")], "rejected": [user("q"), assistant("d")]},
     "ranked", "c.jsonl:2: field 'chosen': expected the conversation to end in an assistant "
     "reply, got user"),
    ({"chosen": [user("q"), assistant("c")], "rejected": [user("q")]}, "ranked",
     "c.jsonl:2: field 'rejected': expected the conversation to end in an assistant reply, "
     "got user"),
    ({"chosen": [user("q1"), assistant("c")], "rejected": [user("q2"), assistant("d")]},
     "ranked", "c.jsonl:2: field 'chosen': expected one assistant reply after the turns "
     "'chosen' and 'rejected' share, got 2 turns after them"),
    ({"chosen": [assistant("c")], "rejected": [assistant("d")]}, "ranked",
     "c.jsonl:2: no prompt: 'chosen' and 'rejected' share no turn and the row has no 'prompt'"),
    ({"prompt": [user("q"), assistant("a")], "chosen": [assistant("c")],
      "rejected": [assistant("d")]}, "ranked",
     "c.jsonl:2: field 'prompt': expected the prompt messages to end in a user turn, got "
     "assistant"),
    ({"prompt": [], "chosen": "c", "rejected": "d"}, "ranked", "c.jsonl:2: field 'prompt': "
     "expected a non-empty list"),
    ({"prompt": [user("q")], "chosen": [assistant("c"), assistant("c2")],
      "rejected": [assistant("d")]}, "ranked", "c.jsonl:2: field 'chosen': expected one "
     "assistant reply after the turns 'chosen' and 'rejected' share, got 2 turns"),
    ({"messages": [user("a")]}, "sft", "c.jsonl:2: field 'messages': expected the conversation "
     "to end in the assistant reply to train on, got user"),
    ({"messages": [assistant("a")]}, "sft", "c.jsonl:2: field 'messages': expected the prompt "
     "messages to end in a user turn, got nothing"),
    ({"prompt": "q", "completion": [user("r")]}, "sft", "c.jsonl:2: field 'completion': "
     "expected one assistant message, got 1 message(s) with roles ['user']"),
    ({"messages": "hi"}, "prompt", "c.jsonl:2: field 'messages': expected a non-empty list"),
    ({"prompt": "q", "completion": "c"}, "unpaired", "c.jsonl:2: missing field 'label'"),
    ({"prompt": "q", "completion": "c", "label": "yes"}, "unpaired",
     "c.jsonl:2: field 'label': expected true (desirable) or false (undesirable), got 'yes'"),
    ({"prompt": "q", "completion": "c", "label": 2}, "unpaired", "c.jsonl:2: field 'label'"),
    ({"prompt": "q", "label": True}, "unpaired", "c.jsonl:2: missing field 'completion'"),
    ({"prompt": "q", "completion": "", "label": True}, "unpaired",
     "c.jsonl:2: field 'completion': expected a non-empty string"),
])
def test_malformed_conversational_rows_name_file_line_field(tmp_path, row, kind, message):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, row])
    with pytest.raises(DataError) as err:
        load_examples(path, kind)
    assert message in str(err.value)
    assert "\n" not in str(err.value)

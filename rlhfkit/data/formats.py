"""Row formats → typed examples. Every prompt becomes a tuple of chat messages.

Accepted rows (docs/data.md has an example of each). A "prompt" is a string or, in the
conversational format of TRL and the Hub, a list of {"role": system|user|assistant, "content"}
messages ending in a user turn.
- SFT:        {"prompt", "response": str}; {"prompt", "completion": str or [assistant message]};
              {"messages": [...]} (the last message, an assistant reply, is the response)
- preference: {"prompt", "chosen", "rejected"} (strings);
              conversational {"chosen": [messages], "rejected": [messages]} with or without a
              "prompt" (UltraFeedback-binarized, TRL): the prompt is the "prompt" messages, if
              any, then the turns both share; each then ends in one assistant reply;
              Anthropic-HH transcripts {"chosen", "rejected"} (whole dialogues: the shared
              prompt is everything up to the last "\\n\\nAssistant:");
              sharegpt {"conversations": [{"from", "value"}...], "chosen": {...}, "rejected": {...}}
- ranked:     {"prompt", "responses": [best, ..., worst]} (K ≥ 2) with optional
              "ranks": [1, 2, 2, 3] (non-decreasing, equal numbers = tie, at least two
              distinct: what `rlhfkit label export` writes); preference rows are read as K = 2
              lists
- prompt:     {"prompt"}; {"messages": [...]} (up to its last assistant reply, if it ends in
              one); any of the above also gives its prompt
- unpaired:   {"prompt", "completion": str or [assistant message], "label": bool} (KTO's
              format: true = desirable; 1/0 accepted)
A malformed row raises DataError naming file:line (row number for data sets), the field and
what was expected.
Tests: tests/data/test_data.py, tests/data/test_chat_formats.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rlhfkit.data.readers import DataError, Record

Messages = tuple  # of (role, content) pairs

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SFTExample:
    messages: Messages
    response: str


@dataclass(frozen=True)
class RankedExample:
    """K ≥ 2 responses best → worst; a preference pair is K = 2 (chosen, rejected).
    ``ranks``: None (strictly ordered) or one rank per response, equal = tie."""
    messages: Messages
    responses: tuple
    ranks: tuple | None = None

    @property
    def chosen(self) -> str:
        return self.responses[0]

    @property
    def rejected(self) -> str:
        return self.responses[-1]


@dataclass(frozen=True)
class PromptExample:
    messages: Messages


@dataclass(frozen=True)
class UnpairedExample:
    """One completion judged on its own (KTO): ``label`` True = desirable."""
    messages: Messages
    completion: str
    label: bool


def _text(record: Record, field: str, allow_empty: bool = False) -> str:
    if field not in record.row:
        raise DataError(f"{record.where()}: missing field '{field}'; row has "
                        f"{sorted(record.row)}")
    value = record.row[field]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DataError(f"{record.where()}: field '{field}': expected a non-empty string, got "
                        f"{type(value).__name__} {str(value)[:60]!r}")
    return value


def _user(prompt: str) -> Messages:
    return (("user", prompt),)


def _messages(record: Record, field: str) -> Messages:
    """A list of {"role", "content"} messages → (role, content) pairs."""
    value = record.row[field]
    if not isinstance(value, list) or not value:
        raise DataError(f"{record.where()}: field '{field}': expected a non-empty list of "
                        f"{{\"role\", \"content\"}} messages, got {type(value).__name__} "
                        f"{str(value)[:60]!r}")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES or \
                not isinstance(message.get("content"), str):
            raise DataError(f"{record.where()}: field '{field}', message {index + 1}: expected "
                            "{\"role\": system|user|assistant, \"content\": str}, got "
                            f"{str(message)[:80]}")
    return tuple((message["role"], message["content"]) for message in value)


def _check_prompt(record: Record, field: str, messages: Messages) -> Messages:
    """A conversational prompt is answered next by the assistant: it ends in a user turn."""
    if not messages or messages[-1][0] != "user":
        last = messages[-1][0] if messages else "nothing"
        raise DataError(f"{record.where()}: field '{field}': expected the prompt messages to end "
                        f"in a user turn, got {last}")
    return messages


def _prompt(record: Record, allow_empty: bool = False) -> Messages:
    """'prompt' as a string (one user turn) or as a list of messages."""
    if isinstance(record.row.get("prompt"), list):
        return _check_prompt(record, "prompt", _messages(record, "prompt"))
    return _user(_text(record, "prompt", allow_empty=allow_empty))


def _reply(record: Record, field: str) -> str:
    """A response as a string, or as a list holding one assistant message (TRL)."""
    if not isinstance(record.row.get(field), list):
        return _text(record, field)
    messages = _messages(record, field)
    if len(messages) != 1 or messages[0][0] != "assistant":
        raise DataError(f"{record.where()}: field '{field}': expected one assistant message, got "
                        f"{len(messages)} message(s) with roles {[r for r, _ in messages]}")
    return messages[0][1]


def _conversational_pair(record: Record) -> tuple[Messages, str, str]:
    """chosen/rejected as message lists (UltraFeedback-binarized; TRL's conversational
    preference format, explicit or implicit prompt): the prompt is the 'prompt' messages (or
    string), if any, then the turns chosen and rejected share, as TRL's ``extract_prompt``;
    after it each side must be exactly one assistant reply."""
    chosen, rejected = _messages(record, "chosen"), _messages(record, "rejected")
    for field, side in (("chosen", chosen), ("rejected", rejected)):
        if side[-1][0] != "assistant":
            raise DataError(f"{record.where()}: field '{field}': expected the conversation to end "
                            f"in an assistant reply, got {side[-1][0]}")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    for field, side in (("chosen", chosen), ("rejected", rejected)):
        if len(side) - shared != 1:
            raise DataError(f"{record.where()}: field '{field}': expected one assistant reply "
                            "after the turns 'chosen' and 'rejected' share, got "
                            f"{len(side) - shared} turns after them")
    given = record.row.get("prompt")
    if isinstance(given, list):
        explicit = _messages(record, "prompt")
        if chosen[:len(explicit)] == explicit:  # the prompt repeated inside chosen/rejected
            explicit = ()
        messages = explicit + chosen[:shared]
    elif shared:  # UltraFeedback: the "prompt" string repeats the first user turn
        messages = chosen[:shared]
    elif given is not None:
        messages = _user(_text(record, "prompt", allow_empty=True))
    else:
        raise DataError(f"{record.where()}: no prompt: 'chosen' and 'rejected' share no turn and "
                        "the row has no 'prompt'")
    return _check_prompt(record, "prompt" if given is not None else "chosen", messages), \
        chosen[-1][1], rejected[-1][1]


def split_hh(record: Record, field: str) -> tuple[Messages, str]:
    """An Anthropic-HH transcript → (prompt messages, final assistant reply)."""
    text = _text(record, field)
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"{record.where()}: field '{field}': expected an HH transcript containing "
                        f"'\\n\\nAssistant:', got {text[:60]!r}")
    parts = _HH_TURN.split(text[:cut])  # ['', 'Human', ' text', 'Assistant', ' text', ...]
    messages = tuple(("user" if parts[i] == "Human" else "assistant", parts[i + 1].strip())
                     for i in range(1, len(parts) - 1, 2))
    if not messages:
        raise DataError(f"{record.where()}: field '{field}': no '\\n\\nHuman:' turn before the "
                        "last assistant reply")
    return messages, text[cut + len(HH_ASSISTANT):].strip()


def split_hh_common(record: Record) -> tuple[Messages, str, str]:
    """HH pair whose replies themselves contain a turn marker (5 of the 2,312 harmless-base test
    rows): the prompt ends at the last "\\n\\nAssistant:" both transcripts share, as in TRL's
    ``extract_prompt``; everything after it is the reply. Tests: tests/data/test_hh_split.py."""
    chosen, rejected = record.row["chosen"], record.row["rejected"]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, shared)  # the marker lies wholly in the shared prefix
    replies = chosen[cut + len(HH_ASSISTANT):].strip(), rejected[cut + len(HH_ASSISTANT):].strip()
    if cut < 0 or not all(replies):
        raise DataError(f"{record.where()}: HH transcripts 'chosen' and 'rejected' must "
                        "share the dialogue up to an '\\n\\nAssistant:'")
    messages, _ = split_hh(Record(record.source, record.line,
                                  {"chosen": chosen[:cut + len(HH_ASSISTANT)]}), "chosen")
    return (messages, *replies)


def _sharegpt_turn(record: Record, turn, field: str) -> tuple[str, str]:
    if not isinstance(turn, dict) or "value" not in turn or \
            _SHAREGPT_ROLES.get(turn.get("from", turn.get("role"))) is None:
        raise DataError(f"{record.where()}: field '{field}': expected a turn "
                        f"{{\"from\": human|gpt|system, \"value\": str}}, got {str(turn)[:80]}")
    return _SHAREGPT_ROLES[turn.get("from", turn.get("role"))], str(turn["value"])


def _sharegpt(record: Record) -> tuple[Messages, str, str]:
    conversations = record.row["conversations"]
    if not isinstance(conversations, list) or not conversations:
        raise DataError(f"{record.where()}: field 'conversations': expected a non-empty list "
                        "of turns")
    messages = tuple(_sharegpt_turn(record, turn, "conversations") for turn in conversations)
    chosen = _sharegpt_turn(record, record.row.get("chosen"), "chosen")[1]
    rejected = _sharegpt_turn(record, record.row.get("rejected"), "rejected")[1]
    return messages, chosen, rejected


def parse_sft(record: Record) -> SFTExample:
    row = record.row
    if "completion" in row:
        return SFTExample(_prompt(record), _reply(record, "completion"))
    if "response" in row or "messages" not in row:
        return SFTExample(_prompt(record), _text(record, "response"))
    messages = _messages(record, "messages")  # (UltraFeedback's train_sft also has "prompt")
    if messages[-1][0] != "assistant":
        raise DataError(f"{record.where()}: field 'messages': expected the conversation to end "
                        f"in the assistant reply to train on, got {messages[-1][0]}")
    return SFTExample(_check_prompt(record, "messages", messages[:-1]), messages[-1][1])


def parse_ranked(record: Record) -> RankedExample:
    """Ranked list or preference pair (any of the three pair formats) → RankedExample."""
    row = record.row
    if "responses" in row:
        responses = row["responses"]
        if not isinstance(responses, list) or len(responses) < 2 or \
                not all(isinstance(r, str) and r.strip() for r in responses):
            raise DataError(f"{record.where()}: field 'responses': expected a list of ≥ 2 "
                            "non-empty strings ranked best → worst")
        messages, ranked = _prompt(record, allow_empty=True), tuple(responses)
    elif "conversations" in row:
        messages, chosen, rejected = _sharegpt(record)
        ranked = (chosen, rejected)
    elif isinstance(row.get("chosen"), list) or isinstance(row.get("rejected"), list):
        if "chosen" not in row or "rejected" not in row:
            _text(record, "rejected" if "chosen" in row else "chosen")  # names the missing one
        messages, chosen, rejected = _conversational_pair(record)
        ranked = (chosen, rejected)
    elif "prompt" in row:
        messages = _prompt(record, allow_empty=True)
        ranked = (_text(record, "chosen"), _text(record, "rejected"))
    elif "chosen" in row:
        messages, chosen = split_hh(record, "chosen")
        rejected_messages, rejected = split_hh(record, "rejected")
        if rejected_messages != messages:
            messages, chosen, rejected = split_hh_common(record)
        ranked = (chosen, rejected)
    else:
        raise DataError(f"{record.where()}: expected a preference row ('prompt'+'chosen'+"
                        "'rejected', conversational or HH 'chosen'+'rejected', or sharegpt "
                        "'conversations') or a ranked list ('prompt'+'responses'); row has "
                        f"{sorted(row)}")
    if len(set(ranked)) < len(ranked):
        raise DataError(f"{record.where()}: tie: the same response appears twice in the ranking; "
                        "expected responses strictly ordered best → worst")
    return RankedExample(messages, ranked, _ranks(record, len(ranked)))


def _ranks(record: Record, k: int) -> tuple | None:
    """Optional "ranks" of a ranked list: k integers ≥ 1, non-decreasing, not all equal."""
    if "ranks" not in record.row:
        return None
    ranks = record.row["ranks"]
    if not isinstance(ranks, list) or len(ranks) != k or \
            not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks) or \
            any(a > b for a, b in zip(ranks, ranks[1:])) or ranks[0] == ranks[-1]:
        raise DataError(f"{record.where()}: field 'ranks': expected {k} integers ≥ 1, one per "
                        "response, non-decreasing (equal = tie) with at least two distinct, got "
                        f"{str(ranks)[:60]}")
    return tuple(ranks)


def parse_prompt(record: Record) -> PromptExample:
    if "prompt" in record.row:
        return PromptExample(_prompt(record))
    if "messages" in record.row:
        messages = _messages(record, "messages")
        if messages[-1][0] == "assistant":  # a whole conversation: prompt up to the last reply
            messages = messages[:-1]
        return PromptExample(_check_prompt(record, "messages", messages))
    if "conversations" in record.row or "chosen" in record.row:
        return PromptExample(parse_ranked(record).messages)
    raise DataError(f"{record.where()}: missing field 'prompt'; row has {sorted(record.row)}")


def parse_unpaired(record: Record) -> UnpairedExample:
    """{"prompt", "completion", "label"} (KTO): one completion, desirable (true) or not."""
    label = record.row.get("label")
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        where = "missing field 'label'" if "label" not in record.row else \
            f"field 'label': expected true (desirable) or false (undesirable), got {label!r}"
        raise DataError(f"{record.where()}: {where}")
    return UnpairedExample(_prompt(record, allow_empty=True), _reply(record, "completion"), label)


PARSERS = {"sft": parse_sft, "ranked": parse_ranked, "prompt": parse_prompt,
           "unpaired": parse_unpaired}

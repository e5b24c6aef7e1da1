"""The three preference formats, parsed from one raw row (a dict) into a `PreferenceRecord`.

- "hh": Anthropic HH-RLHF, `{"chosen", "rejected"}` full dialogues of "\\n\\nHuman:" / "\\n\\nAssistant:" turns. The
  prompt is everything up to and including the last "\\n\\nAssistant:"; both dialogues must share it exactly. It becomes
  chat messages (so a model's chat template applies) and the completions become the final assistant responses.
- "explicit": `{"prompt", "chosen", "rejected"}` with string completions. The prompt is a string (used as is) or a
  list of chat messages (what "hh" records normalise to, so converted HH data loads back unchanged). Strings are not
  stripped: in raw-text data the spacing between prompt and completion is part of the data.
- "conversational": chosen and rejected are lists of `{"role", "content"}` messages (UltraFeedback-binarized style).
  With a `prompt` (messages, or a string meaning one user turn) the completions may repeat it at their start, as
  UltraFeedback does, and it is cut off. Without one the prompt is the longest message prefix chosen and rejected share.
  Either way the completions that remain hold assistant turns only.

`format="auto"` picks one per row: list completions mean "conversational", else a `prompt` key means "explicit",
else "hh". Every problem raises `RecordRejected` with its `Reason`.

KTO also reads UNPAIRED rows, `{"prompt", "completion", "label": true|false}` (`parse_unpaired`): one completion (a
string, or assistant messages) labelled desirable or not, with the same checks; a pair converts to two of them
(`to_unpaired`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import DataError
from .records import Message, PreferenceRecord, Text
from .validation import Reason, RecordRejected, check_record, is_blank

FORMATS = ("auto", "hh", "explicit", "conversational")
ROLES = ("system", "user", "assistant")
# The fields a record is made of; every other field of a row is kept in `record.extra`.
RECORD_FIELDS = ("prompt", "chosen", "rejected")

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
# A turn marker. The first turn may also open the text without the blank line (some HH copies strip it).
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def detect_format(row: dict[str, Any]) -> str:
    """The format of one row, from its keys and the types of its completions."""
    if isinstance(row.get("chosen"), list) or isinstance(row.get("rejected"), list):
        return "conversational"
    return "explicit" if "prompt" in row else "hh"


def parse_record(row: Any, location: str, format: str = "auto") -> PreferenceRecord:
    """Parse and validate one raw row; raise `RecordRejected` naming the first problem found."""
    if not isinstance(row, dict):
        raise RecordRejected(Reason.WRONG_TYPE, f"the record is {_type_name(row)}, expected an object")
    fmt = detect_format(row) if format == "auto" else format
    parse = {"hh": _parse_hh, "explicit": _parse_explicit, "conversational": _parse_conversational}[fmt]
    prompt, chosen, rejected = parse(row)
    extra = {key: value for key, value in row.items() if key not in RECORD_FIELDS}
    record = PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, location=location, extra=extra)
    check_record(record)
    return record


def split_hh_dialogue(dialogue: str, name: str = "dialogue") -> tuple[str, str]:
    """Cut an HH dialogue after its last "\\n\\nAssistant:" into (prompt text, raw final response)."""
    cut = dialogue.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RecordRejected(Reason.MISSING_FINAL_TURN, f"'{name}' has no Assistant turn")
    cut += len(HH_ASSISTANT)
    prompt, response = dialogue[:cut], dialogue[cut:]
    if HH_HUMAN in response:
        raise RecordRejected(Reason.MISSING_FINAL_TURN, f"'{name}' ends with a Human turn")
    return prompt, response


def hh_prompt_messages(prompt: str) -> list[Message]:
    """The turns of an HH prompt (which ends with the "\\n\\nAssistant:" awaiting the response) as chat messages."""
    parts = _HH_TURN.split(prompt)  # [text before the first turn, role, text, role, text, ...]
    if parts[0].strip():
        raise RecordRejected(Reason.BAD_MESSAGE, "the dialogue has text before its first Human turn")
    # The last pair is the empty Assistant turn the response will fill; it is not part of the prompt's messages.
    turns = list(zip(parts[1::2], parts[2::2]))[:-1]
    return [{"role": _HH_ROLES[role], "content": text.strip()} for role, text in turns]


def _parse_hh(row: dict[str, Any]) -> tuple[Text, Text, Text]:
    _require(row, ("chosen", "rejected"))
    chosen, rejected = (_string(row, name) for name in ("chosen", "rejected"))
    chosen_prompt, chosen_response = split_hh_dialogue(chosen, "chosen")
    rejected_prompt, rejected_response = split_hh_dialogue(rejected, "rejected")
    if chosen_prompt != rejected_prompt:
        at = next((i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt)) if a != b), None)
        at = min(len(chosen_prompt), len(rejected_prompt)) if at is None else at
        raise RecordRejected(
            Reason.PROMPT_MISMATCH, f"the dialogues differ at character {at}, before their last Assistant turn"
        )
    # Turns are stripped: the space after "Assistant:" belongs to the marker, not to the response.
    return hh_prompt_messages(chosen_prompt), chosen_response.strip(), rejected_response.strip()


def _parse_explicit(row: dict[str, Any]) -> tuple[Text, Text, Text]:
    _require(row, RECORD_FIELDS)
    prompt = row["prompt"]
    if isinstance(prompt, list):
        prompt = _messages(prompt, "prompt")
    elif not isinstance(prompt, str):
        raise RecordRejected(
            Reason.WRONG_TYPE, f"'prompt' is {_type_name(prompt)}, expected a string or a list of messages"
        )
    return prompt, _string(row, "chosen"), _string(row, "rejected")


def _parse_conversational(row: dict[str, Any]) -> tuple[Text, Text, Text]:
    _require(row, ("chosen", "rejected"))
    chosen, rejected = (_messages(row[name], name) for name in ("chosen", "rejected"))
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list):
            prompt = _messages(prompt, "prompt")
        else:
            raise RecordRejected(
                Reason.WRONG_TYPE, f"'prompt' is {_type_name(prompt)}, expected a string or a list of messages"
            )
        chosen, rejected = (_drop_prefix(m, prompt) for m in (chosen, rejected))
    else:
        if chosen == rejected:
            raise RecordRejected(Reason.IDENTICAL_COMPLETIONS, "nothing to prefer")
        shared = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        if shared == 0:
            raise RecordRejected(Reason.PROMPT_MISMATCH, "the conversations differ from their first message on")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    for name, completion in (("chosen", chosen), ("rejected", rejected)):
        other = next((m for m in completion if m["role"] != "assistant"), None)
        if other is not None:
            raise RecordRejected(Reason.PROMPT_MISMATCH, f"'{name}' has a {other['role']} turn after the prompt")
    return prompt, chosen, rejected


def _drop_prefix(messages: list[Message], prefix: list[Message]) -> list[Message]:
    return messages[len(prefix) :] if messages[: len(prefix)] == prefix else messages


def _require(row: dict[str, Any], names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in row]
    if missing:
        raise RecordRejected(Reason.MISSING_FIELD, ", ".join(f"'{name}'" for name in missing))


def _string(row: dict[str, Any], name: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise RecordRejected(Reason.WRONG_TYPE, f"'{name}' is {_type_name(value)}, expected a string")
    return value


def _messages(value: Any, name: str) -> list[Message]:
    """Validate a list of chat messages; keep only their role and content (what chat templates read)."""
    if not isinstance(value, list):
        raise RecordRejected(Reason.WRONG_TYPE, f"'{name}' is {_type_name(value)}, expected a list of messages")
    messages = []
    for number, message in enumerate(value, start=1):
        where = f"message {number} of '{name}'"
        if not isinstance(message, dict):
            raise RecordRejected(Reason.BAD_MESSAGE, f"{where} is {_type_name(message)}, expected an object")
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise RecordRejected(Reason.BAD_MESSAGE, f"{where} has no {' or '.join(missing)}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RecordRejected(Reason.BAD_MESSAGE, f"{where} has unknown role {role!r} (known: {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise RecordRejected(Reason.BAD_MESSAGE, f"{where} has content that is {_type_name(content)}, not a string")
        messages.append({"role": role, "content": content})
    return messages


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def to_explicit(record: PreferenceRecord) -> PreferenceRecord:
    """The same pair with plain-string completions (the prompt, string or messages, is kept as it is).

    A conversational completion converts when it is one assistant message; several cannot be joined without inventing
    a separator, so they raise a `DataError` naming the record.
    """
    completions = []
    for name in ("chosen", "rejected"):
        value = getattr(record, name)
        if isinstance(value, list):
            if len(value) != 1:
                raise DataError(
                    record.location, f"'{name}' holds {len(value)} messages; an explicit completion is one string"
                )
            value = value[0]["content"]
        completions.append(value)
    return replace(record, chosen=completions[0], rejected=completions[1])


def to_conversational(record: PreferenceRecord) -> PreferenceRecord:
    """The same pair as messages: a string prompt becomes one user turn, string completions one assistant turn each."""

    def as_messages(value: Text, role: str) -> list[Message]:
        return [{"role": role, "content": value}] if isinstance(value, str) else value

    return replace(
        record,
        prompt=as_messages(record.prompt, "user"),
        chosen=as_messages(record.chosen, "assistant"),
        rejected=as_messages(record.rejected, "assistant"),
    )


@dataclass(frozen=True)
class UnpairedRecord:
    """One completion of a prompt, labelled desirable (True) or undesirable (False), for KTO.

    `prompt` and `completion` are as in `PreferenceRecord` (strings, or messages); `extra` keeps the other fields."""

    prompt: Text
    completion: Text
    desirable: bool
    location: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


UNPAIRED_FIELDS = ("prompt", "completion", "label")


def is_unpaired(row: Any) -> bool:
    """Whether a raw row is an unpaired (labelled) record rather than a pair."""
    return isinstance(row, dict) and "label" in row and "chosen" not in row


def parse_unpaired(row: Any, location: str) -> UnpairedRecord:
    """Parse and validate one `{"prompt", "completion", "label"}` row; raise `RecordRejected` naming the problem."""
    if not isinstance(row, dict):
        raise RecordRejected(Reason.WRONG_TYPE, f"the record is {_type_name(row)}, expected an object")
    _require(row, UNPAIRED_FIELDS)
    prompt, completion, label = row["prompt"], row["completion"], row["label"]
    if isinstance(prompt, list):
        prompt = _messages(prompt, "prompt")
    elif not isinstance(prompt, str):
        raise RecordRejected(
            Reason.WRONG_TYPE, f"'prompt' is {_type_name(prompt)}, expected a string or a list of messages"
        )
    if isinstance(completion, list):
        completion = _messages(completion, "completion")
        if any(message["role"] != "assistant" for message in completion):
            raise RecordRejected(Reason.BAD_MESSAGE, "'completion' holds a turn that is not the assistant's")
    elif not isinstance(completion, str):
        raise RecordRejected(
            Reason.WRONG_TYPE, f"'completion' is {_type_name(completion)}, expected a string or a list of messages"
        )
    if not isinstance(label, bool):
        raise RecordRejected(Reason.WRONG_TYPE, f"'label' is {_type_name(label)}, expected true or false")
    if is_blank(prompt):
        raise RecordRejected(Reason.EMPTY_PROMPT, "the prompt has no text")
    if is_blank(completion):
        raise RecordRejected(Reason.EMPTY_COMPLETION, "'completion' has no text")
    extra = {key: value for key, value in row.items() if key not in UNPAIRED_FIELDS}
    return UnpairedRecord(prompt, completion, label, location, extra)


def to_unpaired(record: PreferenceRecord) -> tuple[UnpairedRecord, UnpairedRecord]:
    """A pair as two unpaired records: the chosen completion desirable, the rejected one not."""
    return (
        UnpairedRecord(record.prompt, record.chosen, True, record.location, record.extra),
        UnpairedRecord(record.prompt, record.rejected, False, record.location, record.extra),
    )

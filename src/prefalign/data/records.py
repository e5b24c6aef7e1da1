"""The normalised preference record every loader yields and every trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A chat message as transformers' chat templates expect it: {"role": "user" | "assistant" | "system", "content": str}.
Message = dict[str, str]
# Text is either a plain string (used as is) or a list of chat messages (rendered with the model's chat template).
Text = str | list[Message]


@dataclass(frozen=True)
class PreferenceRecord:
    """One (prompt, chosen, rejected) triple.

    `prompt` is a list of messages for chat data (HH-RLHF dialogues, conversational files) and a string for explicit
    files. `chosen` and `rejected` are the two completions: strings, or assistant messages for conversational data.
    `location` says where the record came from ("file:line" or "file:row N") so any later problem can name it.
    `extra` keeps the source's other fields (a per-pair `margin`, ids, scores) untouched.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    location: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, **self.extra}

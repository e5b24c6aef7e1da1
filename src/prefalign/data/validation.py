"""Why a preference record is rejected, and the report that counts rejections.

Every rejected record gets one `Reason` from a small fixed set, plus a short detail, so a report can both count by
reason and point at the exact record: "pairs.jsonl:3: not valid JSON: Expecting ',' delimiter at column 17".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

from ..errors import PrefalignError
from .records import PreferenceRecord, Text


class Reason(Enum):
    """Why a record was rejected: a stable short `code` (for counting, JSON output) and the `text` shown to people."""

    INVALID_JSON = ("invalid_json", "not valid JSON")
    MISSING_FIELD = ("missing_field", "missing field")
    WRONG_TYPE = ("wrong_type", "wrong type")
    BAD_MESSAGE = ("bad_message", "bad message")
    EMPTY_PROMPT = ("empty_prompt", "empty prompt")
    EMPTY_COMPLETION = ("empty_completion", "empty completion")
    IDENTICAL_COMPLETIONS = ("identical_completions", "chosen identical to rejected")
    PROMPT_MISMATCH = ("prompt_mismatch", "chosen and rejected do not share the prompt")
    MISSING_FINAL_TURN = ("missing_final_turn", "dialogue does not end with an Assistant turn")

    def __init__(self, code: str, text: str):
        self.code = code
        self.text = text


class RecordRejected(Exception):
    """Raised while parsing one record; the loader turns it into a `Rejection` (or a `DataError` when strict)."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Rejection:
    """One rejected record: where it is, why, and a detail naming the field at fault."""

    location: str
    reason: Reason
    detail: str = ""

    @property
    def description(self) -> str:
        """The reason's text and detail on one line (details may quote data, which can hold newlines)."""
        text = f"{self.reason.text}: {self.detail}" if self.detail else self.reason.text
        return " ".join(text.split())

    def __str__(self) -> str:
        return f"{self.location}: {self.description}"


@dataclass
class ValidationReport:
    """What a load saw: how many records it read and kept, and every rejection in file order."""

    source: str
    read: int = 0
    kept: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    @property
    def bad_fraction(self) -> float:
        return self.rejected / self.read if self.read else 0.0

    def count_by_reason(self) -> dict[Reason, int]:
        """Rejections per reason, most frequent first."""
        return dict(Counter(r.reason for r in self.rejections).most_common())

    def locations(self, reason: Reason, limit: int | None = None) -> list[str]:
        """Where the records rejected for `reason` are, in file order (the first `limit` of them)."""
        found = [r.location for r in self.rejections if r.reason is reason]
        return found if limit is None else found[:limit]

    def check(self, max_bad_fraction: float) -> None:
        """Raise a one-line `PrefalignError` when more than `max_bad_fraction` of the records read were rejected."""
        if self.rejected and self.bad_fraction > max_bad_fraction:
            raise PrefalignError(
                f"{self.source}: {self.rejected} of {self.read} records are bad ({self.bad_fraction:.1%}), more than "
                f"the allowed {max_bad_fraction:.1%} (--max-bad-fraction); first: {self.rejections[0]}"
            )


def is_blank(text: Text) -> bool:
    """True for a string of only whitespace, and for a message list whose contents are all whitespace (or empty)."""
    if isinstance(text, str):
        return not text.strip()
    return all(not message["content"].strip() for message in text)


def check_record(record: PreferenceRecord) -> None:
    """The checks every format shares, once the record is parsed: non-empty prompt and completions, and a real pair."""
    if is_blank(record.prompt):
        raise RecordRejected(Reason.EMPTY_PROMPT, "the prompt has no text")
    for name in ("chosen", "rejected"):
        if is_blank(getattr(record, name)):
            raise RecordRejected(Reason.EMPTY_COMPLETION, f"'{name}' has no text")
    if record.chosen == record.rejected:
        raise RecordRejected(Reason.IDENTICAL_COMPLETIONS, "nothing to prefer")

"""User-facing errors.

Anything the user can fix (a bad file, a missing model, a wrong option) raises `PrefalignError`; the command line
prints its message on one line and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class PrefalignError(Exception):
    """An error the user can act on; its message is one line."""


class DataError(PrefalignError):
    """A problem with one input record, located by file and line (or row)."""

    def __init__(self, location: str, reason: str):
        self.location = location
        self.reason = reason
        super().__init__(f"{location}: {reason}")


class ModelError(PrefalignError):
    """A model that cannot be found, pulled or loaded."""


def brief_error(exc: BaseException) -> str:
    """The first two non-empty lines of an exception's message, joined: enough of a library's multi-line error
    (a state-dict mismatch, a reader's complaint) to say what went wrong on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])

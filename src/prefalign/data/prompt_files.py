"""Prompt files, as generation, pair building and evaluation read them.

A prompts file is JSON Lines (or a .json list) of objects with a `prompt` (a string, or chat messages) and any other
fields the caller keeps (an `id`, a verifier's `instruction_id_list` and `kwargs`), or plain text with one prompt per
line. Every problem is a `DataError` naming file:line (or item) and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import DataError, PrefalignError
from ..fileio import jsonl_lines, parse_json_line


def check_prompt(value: Any, location: str) -> Any:
    """`value` if it is a non-blank string or a non-empty list of {role, content} messages; else DataError."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(location, "empty prompt")
        return value
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DataError(location, f"prompt message {i + 1} is not a {{role, content}} pair of strings")
        return value
    raise DataError(location, "`prompt` must be a string or a non-empty list of {role, content} messages")


def _record(value: Any, location: str, reserved: Iterable[str], writer: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(location, f"expected a JSON object with a `prompt` field, got {type(value).__name__}")
    if "prompt" not in value:
        raise DataError(location, "missing field `prompt`")
    clashes = [name for name in reserved if name in value]
    if clashes:
        raise DataError(location, f"field `{clashes[0]}` is written by {writer}; rename it in the input")
    check_prompt(value["prompt"], location)
    return value


class PromptRow(NamedTuple):
    """One record of a prompts file: where it is ("file:line" or "file: item N"), the id it gets when it names none
    ("line-N" or "item-N"), and the record (a dict with a valid `prompt`)."""

    location: str
    default_id: str
    record: dict[str, Any]


def read_prompts(path: Path, reserved: Iterable[str] = (), writer: str = "this command") -> list[dict[str, Any]]:
    """The records of a .jsonl, .json or .txt prompts file, each with a valid `prompt`.

    `reserved` names fields the caller (`writer`, for the message) writes into its output: they are refused in the
    input rather than silently overwritten.
    """
    records = [row.record for row in prompt_rows(path, reserved, writer)]
    if not records:
        raise PrefalignError(f"{path}: no prompts in this file")
    return records


def prompt_rows(path: Path, reserved: Iterable[str] = (), writer: str = "this command") -> Iterator[PromptRow]:
    """The rows of a prompts file, read lazily (a caller that needs the first N stops reading there); as
    `read_prompts`, which every reader of prompt files goes through, but with each record's location."""
    path = Path(path)
    reserved = tuple(reserved)
    if not path.is_file():
        raise PrefalignError(f"{path}: prompts file not found")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".txt"):
        raise PrefalignError(f"{path}: prompts must be a .jsonl, .json or .txt file")
    if suffix == ".jsonl":
        for number, raw in jsonl_lines(path):
            location = f"{path}:{number}"
            yield PromptRow(
                location, f"line-{number}", _record(parse_json_line(raw, location), location, reserved, writer)
            )
    elif suffix == ".json":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg})") from None
        if not isinstance(items, list):
            raise DataError(str(path), "a .json prompts file must hold a list of objects")
        for i, item in enumerate(items, start=1):
            yield PromptRow(f"{path}: item {i}", f"item-{i}", _record(item, f"{path}: item {i}", reserved, writer))
    else:
        # One prompt per line, lines ending at "\n" only: str.splitlines() would also cut a prompt at U+2028 or U+0085.
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if line.strip():
                yield PromptRow(f"{path}:{number}", f"line-{number}", {"prompt": line.removesuffix("\r")})

"""Atomic file writes: a temporary file beside the target, renamed over it only once complete.

A run killed mid-write then leaves either the previous file or the new one, never a truncated one. The temporary name
is hidden and unique per process, in the target's directory so that the final `os.replace` is a same-filesystem rename.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike[str], *, compress: bool | None = None) -> Iterator[IO[str]]:
    """Open `path` for writing text (UTF-8; gzip when the name ends in .gz, or `compress`) and publish it on exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compress = path.name.lower().endswith(".gz") if compress is None else compress
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as raw:
            if compress:
                with gzip.open(raw, "wt", encoding="utf-8") as out:
                    yield out
            else:
                with open(raw.fileno(), "w", encoding="utf-8", closefd=False) as out:
                    yield out
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_open(path) as out:
        out.write(text)
    return Path(path)


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[Any], **dumps: Any) -> int:
    """Write one JSON value per line (`json.dumps(row, ensure_ascii=False, **dumps)`); return how many."""
    count = 0
    with atomic_open(path) as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, **dumps) + "\n")
            count += 1
    return count

"""Atomic file writes: a temporary file beside the target, renamed over it only once complete.

A run killed mid-write then leaves either the previous file or the new one, never a truncated one. The temporary name
is hidden and unique per process, in the target's directory so that the final `os.replace` is a same-filesystem rename.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import DataError, PrefalignError
from .preflight import check_output_file

# Errors of writing a file, whichever file a body inside `atomic_open` was also reading: a full disk, a quota, a file
# size limit, a file system gone read-only or failing.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def _cannot_write(path: Path, exc: OSError) -> PrefalignError:
    return PrefalignError(f"cannot write {path}: {exc.strerror or exc}")


@contextmanager
def atomic_open(path: str | os.PathLike[str], *, compress: bool | None = None) -> Iterator[IO[str]]:
    """Open `path` for writing text (UTF-8; gzip when the name ends in .gz, or `compress`) and publish it on exit.

    A failed write (full disk, read-only file system, a directory in the way) raises PrefalignError naming `path`,
    never the temporary file, and leaves whatever `path` held before untouched."""
    path = Path(path)
    compress = path.name.lower().endswith(".gz") if compress is None else compress
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        check_output_file(path, None)  # names the path at fault (a file where a directory should be...)
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(handle, "wb") as raw:
            if compress:
                with gzip.open(raw, "wt", encoding="utf-8") as out:
                    yield out
            else:
                with open(raw.fileno(), "w", encoding="utf-8", closefd=False) as out:
                    yield out
        if path.is_dir():
            raise PrefalignError(f"cannot write {path}: it is a directory")
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _cannot_write(path, exc) from None
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


def write_json_atomic(path: str | os.PathLike[str], value: Any, **dumps: Any) -> Path:
    """Write one JSON document (`json.dumps(value, indent=2, **dumps)` and a newline) atomically."""
    return write_text_atomic(path, json.dumps(value, indent=2, **dumps) + "\n")


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (or of a directory's files, relative names included): what a run or stage keys on."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def jsonl_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of each non-blank line of a JSON Lines file (.gz read through gzip).

    Lines end at b"\\n" only. `str.splitlines()` would also end them at U+2028, U+2029 and U+0085, which
    `json.dumps(..., ensure_ascii=False)` writes unescaped inside strings: a record holding one would be cut in two.
    The bytes come undecoded so that a caller can report a non-UTF-8 line as a bad record rather than a crash.
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):  # binary iteration splits on b"\n" alone
            if raw.strip():
                yield number, raw


def parse_json_line(raw: bytes, location: str) -> Any:
    """The JSON value of one line (a UTF-8 byte-order mark allowed); DataError naming `location` if it is not one."""
    try:
        return json.loads(raw.decode("utf-8").lstrip("\ufeff"))
    except UnicodeDecodeError as exc:
        raise DataError(location, f"not UTF-8 text at byte offset {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise DataError(location, f"not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """("file:line", value) for each record of a JSON Lines file; a line that is not UTF-8 JSON raises DataError
    naming its file and line. For files prefalign wrote itself; user data goes through `prefalign.data.sources`,
    which reports bad records instead of stopping at the first."""
    for number, raw in jsonl_lines(path):
        location = f"{path}:{number}"
        yield location, parse_json_line(raw, location)

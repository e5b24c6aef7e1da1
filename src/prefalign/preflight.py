"""What a command checks before it spends time: that its outputs can be written and its inputs read.

A command that would fail on its first write after loading a model and data fails here instead, at once, with one line
naming the option, the path and the reason (`PrefalignError`). The checks create nothing, so a command stopped by one
leaves the disk as it found it. Whether a model can be loaded is `prefalign.models.loading.check_model` (it needs the
model registry, a layer above this one); whether options agree is each config's `__post_init__`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .errors import PrefalignError

InputKind = Literal["file", "directory", "file or directory"]


def _label(path: Path, option: str | None) -> str:
    return f"{option} {path}" if option else str(path)


def _nearest_existing(path: Path) -> Path:
    """`path`, or the nearest of its parents (as written: a relative path ends at ".") that exists."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _not_writable(directory: Path) -> str | None:
    """Why files cannot be created in the existing directory `directory`, or None when they can."""
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "permission denied"


def _directory_problem(directory: Path) -> tuple[Path, str] | None:
    """(the directory at fault, why) when `directory` can neither be written into nor created, else None."""
    existing = _nearest_existing(directory)
    shown = Path.cwd() if existing == Path(".") else existing
    if not existing.is_dir():
        return shown, "is a file, not a directory"
    reason = _not_writable(existing)
    return None if reason is None else (shown, f"is not writable ({reason})")


def check_output_dir(path: str | os.PathLike[str], option: str | None = "--output-dir") -> Path:
    """`path` as a Path, if it is a directory files can be written into, or one that can be created."""
    path = Path(path)
    problem = _directory_problem(path)
    if problem is not None:
        culprit, reason = problem
        where = "" if culprit == path else f"cannot create it: {culprit} "
        raise PrefalignError(f"{_label(path, option)}: {where}{reason}")
    return path


def check_output_file(
    path: str | os.PathLike[str], option: str | None = "--output", *, create_parent: bool = True
) -> Path:
    """`path` as a Path, if a file can be written there: its directory exists or (with `create_parent`) can be created.
    An existing file is fine: prefalign's writes are atomic, so it is replaced only by a complete new one."""
    path = Path(path)
    if path.is_dir():
        raise PrefalignError(f"{_label(path, option)}: is a directory; give the name of a file to write")
    if not create_parent and not path.parent.is_dir():
        raise PrefalignError(f"{_label(path, option)}: no such directory {path.parent}")
    problem = _directory_problem(path.parent)
    if problem is not None:
        culprit, reason = problem
        raise PrefalignError(f"{_label(path, option)}: cannot write it: {culprit} {reason}")
    return path


def check_input(path: str | os.PathLike[str], option: str | None, kind: InputKind = "file") -> Path:
    """`path` as a Path, if it exists, is a `kind` and can be read."""
    path = Path(path)
    label = _label(path, option)
    if not path.exists():
        raise PrefalignError(f"{label}: no such {kind}")
    if kind == "file" and path.is_dir():
        raise PrefalignError(f"{label}: is a directory; give a file")
    if kind == "directory" and not path.is_dir():
        raise PrefalignError(f"{label}: is a file; give a directory")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise PrefalignError(f"{label}: cannot read it (permission denied)")
    return path

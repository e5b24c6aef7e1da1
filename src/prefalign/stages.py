"""Resumable pipeline stages: each writes its own directory, atomically, and is skipped when nothing changed.

A stage's identity is a JSON-able dict of its settings (including `prefalign.fileio.file_digest` of the files it
reads). The stage runs in a temporary directory beside its target and is renamed into place only when it finished,
with a `stage.json` recording those settings, so a kill at any point leaves either the old complete result or none,
and a rerun redoes only stages whose settings changed or that never finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import say
from .fileio import write_json_atomic

STAGE_FILE = "stage.json"
PENDING_FILE = "stage.pending.json"  # in a .partial directory: the settings it is being built with


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageResult:
    name: str
    directory: Path
    skipped: bool
    seconds: float


def run_stage(
    name: str,
    directory: Path,
    settings: dict[str, Any],
    body: Callable[[Path], None],
    *,
    force: bool = False,
    resumable: bool = False,
) -> StageResult:
    """Run `body(work_dir)` unless `directory` already holds a finished run with the same settings.

    A `resumable` stage's body can pick up its own unfinished work (a training run's checkpoints, the lines a pair
    builder already wrote): a `.partial` directory left by a killed run with the same settings is handed back to it
    instead of being wiped.
    """
    directory = Path(directory)
    digest = settings_digest(settings)
    marker = directory / STAGE_FILE
    if not force and marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("digest") == digest:
            say(f"[{name}] up to date, skipped ({directory})", prefix="")
            return StageResult(name, directory, True, 0.0)
    work = directory.with_name(directory.name + ".partial")
    pending = work / PENDING_FILE
    if work.exists():  # left by a killed run
        same = pending.exists() and json.loads(pending.read_text()).get("digest") == digest
        if resumable and same and not force:
            say(f"[{name}] resuming the unfinished run in {work}", prefix="")
        else:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(pending, {"name": name, "digest": digest})
    say(f"[{name}] running -> {directory}", prefix="")
    start = time.perf_counter()
    body(work)
    seconds = time.perf_counter() - start
    pending.unlink()
    record = {"name": name, "digest": digest, "settings": settings, "seconds": round(seconds, 2)}
    write_json_atomic(work / STAGE_FILE, record, default=str)
    if directory.exists():
        shutil.rmtree(directory)
    work.rename(directory)
    # The body wrote (and may have printed) paths under the scratch name; this line says where its output now is.
    say(f"[{name}] done in {seconds:.0f} s: {directory}", prefix="")
    return StageResult(name, directory, False, seconds)

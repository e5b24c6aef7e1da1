"""Training checkpoints: everything needed to continue a run as if it had never stopped.

Layout of `O/checkpoints/step-N/`:

    adapter/                 a peft model's adapters (`save_pretrained`: standard peft files), and
    head.safetensors         when the peft model sits inside a wrapper (the reward model: LM + scalar head), the
                             wrapper's own weights outside it; or
    model.safetensors        a full model's state dict (tied weights stored once)
    optimizer.pt             optimizer state        (torch.save; loaded with weights_only=True)
    scheduler.pt             LR scheduler state     (idem; absent when the run has no scheduler)
    rng.json, rng.pt         RNG states: python and numpy as JSON, torch CPU/CUDA as tensors (one pair per rank saved)
    trainer_state.json       step, epoch, data position, whatever JSON the loop passes
    COMPLETE                 written last: JSON {"step": N, "files": {relative path: {"size", "sha256"}}}

Atomicity: a checkpoint is written into `step-N.tmp-<pid>`, synced to disk, and renamed to `step-N` in one step, so a
run killed at any moment leaves either the previous set of checkpoints or the new one. `latest_checkpoint` also insists
on the COMPLETE marker, so a step directory that somehow lost files (a partial copy by hand) is never resumed from.
Any name with a dot in it (`.tmp-`, `.old-`, `.deleting-`) is a leftover of an interrupted write or prune and is
removed by the next save. One process writes a given output directory (rank 0 under torchrun).

Verification: the COMPLETE marker lists every file's size and sha256, and `load_checkpoint` checks them before reading
anything, so a file damaged after the save (a full disk, an interrupted copy, a bad sector) is named in one line
(`DamagedCheckpoint`) instead of failing inside torch. `resumable_checkpoint` (--resume) falls back to the newest
intact checkpoint, saying which it skipped and why. A checkpoint of an older version (marker "N", no digests) is
checked the only way it can be: every file must load.

Nothing is unpickled on load: weights come from safetensors, optimizer/scheduler/torch RNG through
`torch.load(weights_only=True)`, and the rest from JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..console import warn
from ..errors import PrefalignError, brief_error
from ..fileio import file_digest
from .checkpoint_weights import load_weights, save_weights
from .rng_state import capture_rng_state, load_rng_state, restore_rng_state, rng_paths, save_rng_state

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
TRAINER_STATE_FILE = "trainer_state.json"

_STEP_DIR = re.compile(r"step-(\d+)")


class DamagedCheckpoint(PrefalignError):
    """A checkpoint whose files are not what was written (or, from an older version, do not load)."""


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    trainer_state: dict[str, Any],
    keep_last: int,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write `output_dir/checkpoints/step-<step>/` atomically and prune to the newest `keep_last` (<= 0 keeps all).

    `model` may be wrapped in DistributedDataParallel or torch.compile; the inner model is saved. `trainer_state` must
    be JSON-serialisable; its "step" is set to `step`. `rng_states` holds one `capture_rng_state()` per rank (index =
    rank) when ranks draw different random numbers (e.g. dropout seeded by rank); by default the calling process's
    state is saved, and every rank restores it. Returns the checkpoint directory.
    """
    tmp = begin_checkpoint(output_dir, step)
    save_weights(unwrap_model(model), tmp)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    return publish_checkpoint(tmp, step, scheduler, trainer_state, keep_last, rng_states)


def begin_checkpoint(output_dir: Path, step: int) -> Path:
    """The empty directory a checkpoint of `step` is written into before `publish_checkpoint` (leftovers of an
    interrupted write removed first)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    tmp = root / f"step-{step}.tmp-{os.getpid()}"
    tmp.mkdir()
    return tmp


def publish_checkpoint(
    tmp: Path,
    step: int,
    scheduler: Any | None,
    trainer_state: dict[str, Any],
    keep_last: int,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Add the schedule, RNG and trainer state to the weights and optimizer state in `tmp` (`begin_checkpoint`),
    then the COMPLETE marker, and rename it to `step-<step>` (see `save_checkpoint`); returns that directory."""
    root, final = tmp.parent, tmp.parent / f"step-{step}"
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
    for rank, state in enumerate(rng_states if rng_states is not None else [capture_rng_state()]):
        save_rng_state(state, tmp, rank)
    _write_json(tmp / TRAINER_STATE_FILE, {**trainer_state, "step": step})
    _write_json(tmp / COMPLETE_MARKER, {"step": step, "files": _manifest(tmp)})
    _fsync_tree(tmp)

    if final.exists():
        # Saving a step that already exists (a resumed run checkpointing the step it resumed from): move the old one
        # aside first, because a rename cannot replace a non-empty directory.
        old = root / f"step-{step}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(root)

    if keep_last > 0:
        for stale in _complete_checkpoints(root)[:-keep_last]:
            _remove_dir(stale)
    return final


def resumable_checkpoint(output_dir: Path) -> Path | None:
    """The newest intact checkpoint under `output_dir` (None when there is no complete one), warning about each newer
    one that is damaged; a PrefalignError when every complete checkpoint is damaged."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    damaged: list[str] = []
    for checkpoint in reversed(_complete_checkpoints(root) if root.is_dir() else []):
        try:
            verify_checkpoint(checkpoint)
        except DamagedCheckpoint as error:
            damaged.append(str(error))
            warn(f"{error}; skipping it")
            continue
        if damaged:
            warn(f"resuming from the newest intact checkpoint instead: {checkpoint}")
        return checkpoint
    if damaged:
        raise PrefalignError(
            f"--resume: every checkpoint in {root} is damaged ({len(damaged)}, newest: {damaged[0]}); "
            "rerun without --resume to start again"
        )
    return None


def verify_checkpoint(path: Path) -> None:
    """Raise `DamagedCheckpoint` naming the first file of `path` that is missing, of another size or digest than the
    COMPLETE marker records, or (a checkpoint of an older version, which records none) that does not load."""
    path = Path(path)
    marker = path / COMPLETE_MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise DamagedCheckpoint(f"{path}: damaged: {COMPLETE_MARKER} unreadable ({exc})") from None
    if not isinstance(recorded, dict):  # an older version's marker: the step number only
        _check_loadable(path)
        return
    for name, expected in recorded.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise DamagedCheckpoint(f"{path}: damaged: {name} is missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise DamagedCheckpoint(f"{path}: damaged: {name} is {size} bytes, {expected['size']} were written")
        if file_digest(file) != expected["sha256"]:
            raise DamagedCheckpoint(f"{path}: damaged: {name} does not have the sha256 written with it")


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `step-N` directory under `output_dir/checkpoints`, or None when there is none."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    complete = _complete_checkpoints(root)
    return complete[-1] if complete else None


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states saved by `save_checkpoint`; return the trainer state.

    `model` must have the same structure as the one saved (for peft: the same adapters already attached). `rank`
    selects which saved RNG state to restore when one was saved per rank; otherwise rank 0's is used.
    """
    path = Path(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise PrefalignError(f"{path}: not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    verify_checkpoint(path)
    load_weights(unwrap_model(model), path)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    return restore_run_state(path, scheduler, rank)


def restore_run_state(path: Path, scheduler: Any | None, rank: int) -> dict[str, Any]:
    """Restore the schedule and this rank's RNG states from the checkpoint `path`; return its trainer state."""
    if scheduler is not None:
        if not (path / SCHEDULER_FILE).is_file():
            raise PrefalignError(f"{path}: no {SCHEDULER_FILE}, but this run has a learning-rate scheduler")
        scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True))
    saved_per_rank = rng_paths(path, rank)[0].is_file()
    restore_rng_state(load_rng_state(path, rank if saved_per_rank else 0))
    return json.loads((path / TRAINER_STATE_FILE).read_text())


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------------------------------------------------------------
# Files


def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under `directory`, by relative path (the COMPLETE marker's record)."""
    return {
        file.relative_to(directory).as_posix(): {"size": file.stat().st_size, "sha256": file_digest(file)}
        for file in sorted(directory.rglob("*"))
        if file.is_file() and file.name != COMPLETE_MARKER
    }


def _check_loadable(checkpoint: Path) -> None:
    """Read every file of an older checkpoint the way loading will (safetensors, torch weights_only, JSON)."""
    from safetensors.torch import load_file

    for file in sorted(f for f in checkpoint.rglob("*") if f.is_file() and f.name != COMPLETE_MARKER):
        try:
            if file.suffix == ".safetensors":
                load_file(str(file))
            elif file.suffix == ".pt":
                torch.load(file, map_location="cpu", weights_only=True)
            elif file.suffix == ".json":
                json.loads(file.read_text())
        except Exception as exc:  # whatever a reader raises on whatever damage, it means the same: damaged
            reason = brief_error(exc)
            raise DamagedCheckpoint(
                f"{checkpoint}: damaged: {file.relative_to(checkpoint)} does not load ({reason})"
            ) from None


def _complete_checkpoints(root: Path) -> list[Path]:
    """Complete `step-N` directories, oldest first."""
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.fullmatch(entry.name)
        if match and (entry / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), entry))
    return [entry for _, entry in sorted(found)]


def _remove_leftovers(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name.startswith("step-") and "." in entry.name and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _remove_dir(directory: Path) -> None:
    # Rename first so that a prune interrupted half-way leaves a leftover name, never a step-N missing files.
    doomed = directory.with_name(f"{directory.name}.deleting-{os.getpid()}")
    directory.rename(doomed)
    shutil.rmtree(doomed)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _fsync_tree(directory: Path) -> None:
    # Data reaches the disk before the rename publishes it, so a power cut cannot leave a "complete" empty file.
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

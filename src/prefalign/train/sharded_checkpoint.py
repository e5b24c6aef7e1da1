"""Checkpoints of a sharded run (--fsdp): every process writes its own shards, with `torch.distributed.checkpoint`.

A sharded checkpoint is a `step-N/` directory like any other (`prefalign.train.checkpoint`: written under a temporary
name, renamed once complete, verified by the digests in its COMPLETE marker, resumed one step late), except that
the weights and the optimizer state are in

    sharded/                 DCP: one file of shards per process and a .metadata index (model and optimizer)

instead of model.safetensors / adapter/ and optimizer.pt. Rank 0 creates the directory, every rank writes its shards
into it, and rank 0 then adds the schedule, every rank's RNG state and the trainer state and publishes it. So the
output directory must be one filesystem that every process sees (on several machines: a shared one).

A sharded checkpoint is resumed by a sharded run with the same processes and options; not without --fsdp, nor a
plain checkpoint with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import PrefalignError
from .checkpoint import (
    COMPLETE_MARKER,
    begin_checkpoint,
    load_checkpoint,
    publish_checkpoint,
    restore_run_state,
    save_checkpoint,
    verify_checkpoint,
)
from .distributed import DistInfo, barrier
from .sharding import is_sharded

SHARDED_DIR = "sharded"


def save_run_checkpoint(
    output_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep_last: int,
    rng_states: list[dict[str, Any]],
    info: DistInfo,
) -> None:
    """Every rank calls this: rank 0 writes a plain checkpoint (`save_checkpoint`), or, for a sharded `model`, every
    rank writes its shards and rank 0 publishes the whole."""
    if not is_sharded(model):
        if info.is_main:
            save_checkpoint(
                output_dir,
                step,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                trainer_state=trainer_state,
                keep_last=keep_last,
                rng_states=rng_states,
            )
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    where = [begin_checkpoint(output_dir, step) if info.is_main else None]
    torch.distributed.broadcast_object_list(where, src=0)  # the directory rank 0 made, for every rank to write into
    tmp = Path(where[0])
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp / SHARDED_DIR))
    if info.is_main:  # dcp.save returns once every rank's shards and the index are written
        publish_checkpoint(tmp, step, scheduler, trainer_state, keep_last, rng_states)
    barrier(info)


def load_run_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int
) -> dict[str, Any]:
    """Restore what `save_run_checkpoint` wrote (every rank calls this); return the trainer state. A checkpoint saved
    with --fsdp and a run without it (or the other way round) is an error naming the checkpoint."""
    path = Path(path)
    saved_sharded, sharded = (path / SHARDED_DIR).is_dir(), is_sharded(model)
    if saved_sharded != sharded:
        saved, run = ("sharded", "not") if saved_sharded else ("not sharded", "sharded")
        raise PrefalignError(
            f"{path}: this checkpoint is {saved} (--fsdp under torchrun) and this run is {run}; resume with the "
            "processes and options the run started with"
        )
    if not sharded:
        return load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (path / COMPLETE_MARKER).is_file():
        raise PrefalignError(f"{path}: not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    verify_checkpoint(path)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(path / SHARDED_DIR))  # into the shards this rank holds
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return restore_run_state(path, scheduler, rank)

"""Random states of a training process, captured, restored, and kept in a checkpoint: torch's CPU and CUDA states are
byte tensors (torch.save, loaded with weights_only=True); python's and numpy's are tuples of ints (JSON). Restoring
them makes a resumed run draw exactly what the uninterrupted one would have (dropout masks, data order)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and (when present) CUDA random states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`: the next random draws equal those that followed the capture."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_paths(checkpoint: Path, rank: int) -> tuple[Path, Path]:
    """The JSON and tensor files of `rank`'s states (rank 0 unsuffixed: older checkpoints have only those)."""
    suffix = "" if rank == 0 else f"-rank{rank}"
    return checkpoint / f"rng{suffix}.json", checkpoint / f"rng{suffix}.pt"


def save_rng_state(state: dict[str, Any], directory: Path, rank: int) -> None:
    """Write `capture_rng_state()` of process `rank` into the checkpoint directory `directory`."""
    json_path, tensor_path = rng_paths(directory, rank)
    version, internal, gauss_next = state["python"]
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    saved = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": np.asarray(keys).tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    json_path.write_text(json.dumps(saved, indent=2) + "\n")
    torch.save({key: state[key] for key in ("torch", "cuda") if key in state}, tensor_path)


def load_rng_state(checkpoint: Path, rank: int) -> dict[str, Any]:
    """The states `save_rng_state` wrote for `rank`, as `restore_rng_state` takes them."""
    json_path, tensor_path = rng_paths(checkpoint, rank)
    saved = json.loads(json_path.read_text())
    py, npy = saved["python"], saved["numpy"]
    tensors = torch.load(tensor_path, map_location="cpu", weights_only=True)
    return {
        "python": (py["version"], tuple(py["internal"]), py["gauss_next"]),
        "numpy": (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        ),
        **tensors,
    }

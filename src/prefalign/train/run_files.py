"""What a training run writes besides metrics and checkpoints: run.json at the start and the final model at the end."""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .. import __version__, preflight
from ..console import library_progress_hidden
from ..errors import PrefalignError
from ..fileio import file_digest, write_json_atomic
from ..models.loading import check_model
from ..models.lora import is_lora, merged_copy, save_adapter
from .config import TrainConfig
from .distributed import DistInfo
from .memory import StateBytes
from .objectives.base import Objective


def check_output_dir(out: Path, resume: bool) -> None:
    """Fail before any work if `out` cannot hold this run: it cannot be created or written into, or it holds a run
    already and `resume` is off."""
    preflight.check_output_dir(out)
    if not resume and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
        raise PrefalignError(f"{out} already holds a run: pass --resume to continue it, or choose another --output-dir")


def check_run(config: TrainConfig) -> None:
    """What a training command checks before it reads data or loads a model: the output directory (as
    `check_output_dir`), the models named (--model, a DPO --ref-model) and the data files (--data, --eval-data)."""
    check_output_dir(Path(config.output_dir), config.resume)
    check_model(config.model)
    ref_model = getattr(config, "ref_model", None)  # DPO's only
    if ref_model:
        check_model(ref_model, "--ref-model")
    preflight.check_input(config.data, "--data", "file or directory")  # a directory: a saved `datasets` one
    if config.eval_data:
        preflight.check_input(config.eval_data, "--eval-data", "file or directory")


def save_final(model: torch.nn.Module, tokenizer: Any, out: Path, *, merge: bool) -> Path:
    """O/final: the LoRA adapter (and with `merge` a merged model in final/merged), or the full model; + tokenizer.

    Written beside it and renamed into place once complete: a failed save (a full disk) leaves no partial final/."""
    final, tmp = out / "final", out / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save_model(model, tokenizer, tmp, merge=merge)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PrefalignError(
            f"cannot save the final model in {final}: {reason}; once that is fixed, rerun with --resume (it "
            "continues from the newest checkpoint, if any)"
        ) from exc
    if final.exists():  # a resumed run that had already finished once
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _save_model(model: torch.nn.Module, tokenizer: Any, directory: Path, *, merge: bool) -> None:
    with library_progress_hidden():  # transformers' "Writing model shards" bar: our own lines say where it went
        _save_weights(model, tokenizer, directory, merge=merge)


def _save_weights(model: torch.nn.Module, tokenizer: Any, directory: Path, *, merge: bool) -> None:
    if is_lora(model):
        save_adapter(model, directory)
        if merge:
            merged_copy(model).save_pretrained(directory / "merged")
            tokenizer.save_pretrained(directory / "merged")
    else:
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def write_run_info(
    out: Path,
    config: TrainConfig,
    objective: Objective,
    info: DistInfo,
    resumed_from: str | None,
    state_bytes: StateBytes,
) -> None:
    """O/run.json: the command, config, versions, data digests, processes, and the training state's bytes per
    process (rank 0's: local shards under --fsdp)."""
    import peft  # for their versions; loaded by training anyway, but not by importing this module
    import transformers

    data_files = [path for path in (config.data, config.eval_data) if path]
    run = {
        "command": objective.name,
        "config": asdict(config),
        "versions": {
            "prefalign": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "data_sha256": {path: file_digest(path) for path in data_files},
        "world_size": info.world_size,
        "device": str(info.device),
        "sharding": "fsdp" if config.fsdp and info.is_distributed else None,
        "state_bytes_per_process": asdict(state_bytes) | {"total": state_bytes.total},
        "resumed_from": resumed_from,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out / "run.json", run)

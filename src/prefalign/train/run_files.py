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

from .. import __version__
from ..errors import PrefalignError
from ..fileio import file_digest, write_json_atomic
from ..models.lora import is_lora, merged_copy, save_adapter
from .config import TrainConfig
from .distributed import DistInfo
from .objectives.base import Objective


def check_output_dir(out: Path, resume: bool) -> None:
    if not resume and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
        raise PrefalignError(f"{out} already holds a run: pass --resume to continue it, or choose another --output-dir")


def save_final(model: torch.nn.Module, tokenizer: Any, out: Path, *, merge: bool) -> Path:
    """O/final: the LoRA adapter (and with `merge` a merged model in final/merged), or the full model; + tokenizer."""
    final, tmp = out / "final", out / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if is_lora(model):
        save_adapter(model, tmp)
        if merge:
            merged_copy(model).save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
    else:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if final.exists():  # a resumed run that had already finished once
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def write_run_info(
    out: Path, config: TrainConfig, objective: Objective, info: DistInfo, resumed_from: str | None
) -> None:
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
        "resumed_from": resumed_from,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out / "run.json", run)

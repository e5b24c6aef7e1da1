"""Kill a training run with SIGKILL after a checkpoint, resume it, and get the uninterrupted run's metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prefalign.errors import PrefalignError
from prefalign.train.config import DPOConfig
from prefalign.train.loop import train
from prefalign.train.objectives import DPOObjective
from test_train_support import (
    assert_same_metrics,
    config_options,
    kill_after_first_checkpoint,
    quiet,
    read_records,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)


def _start(config: DPOConfig) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same single thread as this process, for identical numerics
    return subprocess.Popen(
        [sys.executable, "-m", "prefalign", "dpo", *config_options(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-with-dropout"])
def test_killed_and_resumed_run_matches_the_uninterrupted_one(tiny_model_dir: Path, tmp_path: Path, lora: bool) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    # Logging every 3 steps and saving every 4: the checkpoint falls inside a logging window, whose sums it must carry.
    # LoRA dropout draws random numbers every step, so the RNG state must be restored as well.
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        max_steps=36,
        learning_rate=1e-2 if lora else 1e-3,
        logging_steps=3,
        eval_split=0.25,
        eval_steps=6,
        save_steps=4,
        keep_checkpoints=2,
        lora=lora,
        lora_rank=4,
        lora_dropout=0.2,
    )
    uninterrupted = DPOConfig(**options, output_dir=str(tmp_path / "uninterrupted"))
    train(uninterrupted, DPOObjective(uninterrupted))

    interrupted = DPOConfig(**options, output_dir=str(tmp_path / "interrupted"))
    process = _start(interrupted)
    checkpoint = kill_after_first_checkpoint(process, tmp_path / "interrupted")
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "interrupted" / "final").exists(), "the run finished before it was killed"

    resumed = DPOConfig(**options, output_dir=str(tmp_path / "interrupted"), resume=True)
    result = train(resumed, DPOObjective(resumed))
    assert result.summary["resumed_from"] is not None
    assert int(Path(result.summary["resumed_from"]).name.removeprefix("step-")) >= int(checkpoint.name[5:])
    expected = read_records(tmp_path / "uninterrupted")
    assert len(expected) == 13 + 7  # train records at 1, 3, 6, ..., 36; eval records at 0, 6, ..., 36
    assert_same_metrics(read_records(tmp_path / "interrupted"), expected, tol=1e-6)

    # Resuming with another data order would silently train on other batches: refused.
    reseeded = DPOConfig(**{**options, "seed": 7}, output_dir=str(tmp_path / "interrupted"), resume=True)
    with pytest.raises(PrefalignError, match="resume with the run's data, seed and global batch"):
        train(reseeded, DPOObjective(reseeded))

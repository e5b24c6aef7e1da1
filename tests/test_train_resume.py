"""Kill a training run with SIGKILL after a checkpoint, resume it, and get the uninterrupted run's metrics."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prefalign.cli import main
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


def _truncate(path: Path) -> None:
    """Damage a file as a full disk or an interrupted copy leaves it: its first half only."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back_to_the_previous_one(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    options = quiet(model=str(tiny_model_dir), data=str(data), max_steps=12, learning_rate=1e-3, logging_steps=2)
    options |= {"eval_split": 0.25, "eval_steps": 4, "save_steps": 4, "keep_checkpoints": 3}
    uninterrupted = DPOConfig(**options, output_dir=str(tmp_path / "uninterrupted"))
    train(uninterrupted, DPOObjective(uninterrupted))

    # The same run, stopped after its step-8 checkpoint, whose optimizer.pt and scheduler.pt were then truncated.
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "uninterrupted", damaged)
    shutil.rmtree(damaged / "final")
    (damaged / "summary.json").unlink()
    for name in ("optimizer.pt", "scheduler.pt"):
        _truncate(damaged / "checkpoints" / "step-8" / name)
    capsys.readouterr()

    resumed = DPOConfig(**options, output_dir=str(damaged), resume=True)
    result = train(resumed, DPOObjective(resumed))
    err = capsys.readouterr().err
    step_8, step_4 = damaged / "checkpoints" / "step-8", damaged / "checkpoints" / "step-4"
    assert f"warning: {step_8}: damaged: optimizer.pt is " in err
    assert "were written; skipping it" in err
    assert f"resuming from the newest intact checkpoint instead: {step_4}" in err
    assert result.summary["resumed_from"] == str(step_4)
    assert_same_metrics(read_records(damaged), read_records(tmp_path / "uninterrupted"), tol=1e-6)


def test_resume_with_only_damaged_checkpoints_is_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    options = quiet(model=str(tiny_model_dir), data=str(data), max_steps=3, learning_rate=1e-3, save_steps=2)
    config = DPOConfig(**options, output_dir=str(tmp_path / "run"))
    train(config, DPOObjective(config))
    _truncate(tmp_path / "run" / "checkpoints" / "step-2" / "optimizer.pt")
    capsys.readouterr()

    assert main(["dpo", *config_options(DPOConfig(**options, output_dir=str(tmp_path / "run"), resume=True))]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("prefalign: error: --resume: every checkpoint in ")
    assert "step-2: damaged: optimizer.pt is " in errors[0]
    assert "rerun without --resume to start again" in errors[0]
    assert "Traceback" not in err

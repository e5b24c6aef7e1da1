"""Divergence caught on the tiny model: a learning rate that destroys it stops the run before the bad update (the last
good checkpoint kept and resumable), or, with --on-divergence warn, finishes with the warnings in summary.json; a zero
gradient at a non-zero loss is a warning."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from prefalign.cli import main
from prefalign.train.checkpoint import latest_checkpoint, verify_checkpoint
from prefalign.train.config import DPOConfig
from prefalign.train.loop import train
from prefalign.train.objectives import DPOObjective
from test_train_support import (
    config_options,
    quiet,
    records_of,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)

# Full fine-tuning of the tiny model at a peak learning rate of 1, warmed up over 10 steps: the first steps are sound,
# then the policy falls apart (KL from the reference above 5 nats/token, log-probs many times the reference's).
DESTROYING = {"learning_rate": 1.0, "warmup_ratio": 0.5, "lr_schedule": "constant", "max_steps": 20}
STOPPED = re.compile(
    r"prefalign: error: step (\d+): diverged: train (.+) is above --divergence-([a-z-]+) ([\d.]+); stopped, nothing "
    r"saved from these weights; last good checkpoint: (\S+) \(rerun with --resume and a lower --learning-rate"
)


def _options(tiny_model_dir: Path, tmp_path: Path, **overrides) -> dict:
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    options = quiet(model=str(tiny_model_dir), data=str(data), logging_steps=1, eval_steps=1000, save_steps=1)
    return {**options, "output_dir": str(tmp_path / "run"), **overrides}


def test_a_destroying_learning_rate_stops_before_the_bad_update_and_the_last_good_checkpoint_resumes(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _options(tiny_model_dir, tmp_path, **DESTROYING)
    assert main(["dpo", *config_options(DPOConfig(**options))]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prefalign: error")]
    assert len(lines) == 1
    match = STOPPED.match(lines[0])
    assert match, lines[0]
    step, last_good = int(match.group(1)), Path(match.group(5))
    assert 2 <= step <= 8  # within a few steps of the learning rate becoming destructive
    run = tmp_path / "run"
    # Step `step` judged the weights after step - 1: that checkpoint is never written, the one before is the newest.
    assert last_good == latest_checkpoint(run) == run / "checkpoints" / f"step-{step - 2}"
    assert not (run / "checkpoints" / f"step-{step - 1}").exists()
    assert not (run / "final").exists() and not (run / "summary.json").exists()
    verify_checkpoint(last_good)  # intact

    # Continue from it with a sane learning rate: it loads, the new rate wins over the checkpoint's, the run finishes.
    resumed = DPOConfig(**{**options, "learning_rate": 1e-3, "max_steps": step + 2}, resume=True)
    result = train(resumed, DPOObjective(resumed))
    assert result.summary["resumed_from"] == str(last_good)
    assert result.summary["warnings"] == []
    assert records_of(run, "train")[-1]["learning_rate"] == pytest.approx(1e-3)
    assert (run / "final").is_dir()


def test_on_divergence_warn_finishes_with_the_warnings_in_the_summary(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _options(tiny_model_dir, tmp_path, **{**DESTROYING, "max_steps": 8}, on_divergence="warn", save_steps=0)
    assert main(["dpo", *config_options(DPOConfig(**options))]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    diverged = [warning for warning in summary["warnings"] if ": diverged: " in warning]
    assert diverged, summary["warnings"]
    assert any("--divergence-max-kl 5" in warning for warning in diverged)
    err = capsys.readouterr().err
    for warning in diverged:
        assert f"prefalign: warning: {warning}" in err
    assert (tmp_path / "run" / "final").is_dir()


def test_a_zero_gradient_at_a_non_zero_loss_is_a_warning(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A LoRA adapter pushed by a learning rate of 1e9 saturates the tiny model: the loss stays near ln 2, the gradient
    # is exactly 0 from then on, and nothing the divergence limits measure moves.
    options = _options(tiny_model_dir, tmp_path, learning_rate=1e9, max_steps=6, lora=True, lora_rank=4, save_steps=0)
    config = DPOConfig(**options)
    result = train(config, DPOObjective(config))
    zero = [warning for warning in result.summary["warnings"] if "gradient norm is exactly 0" in warning]
    assert len(zero) == 1  # once per episode, not once per step
    assert re.match(r"step \d+: the gradient norm is exactly 0 at a train loss of 0\.\d+", zero[0])

"""Helpers shared by the training tests (imported by them; holds no tests itself).

The synthetic preference set has one obvious preference, so a few dozen steps on the tiny model must learn it: the
chosen answer is always the same polite sentence, the rejected one always the same curt one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch

from prefalign.train.checkpoint import latest_checkpoint

QUESTIONS = [
    "Is water wet?",
    "Is fire cold?",
    "Why is the sky blue?",
    "How do I bake bread?",
    "Can you help me?",
    "Do plants need light?",
    "What is two plus three?",
    "Is the heart a pump?",
]
CHOSEN = "Yes, thank you very much."
REJECTED = "no, I don't know"

DPO_KEYS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "kl",
    "logratio",
}
TRAIN_ONLY_KEYS = {"grad_norm", "learning_rate", "tokens_per_second"}
TIMING_KEYS = {"tokens_per_second", "pairs_per_second", "examples_per_second"}


@pytest.fixture(autouse=True)
def single_thread() -> Any:
    """One intra-op thread for the tiny model: its matrices are too small to gain from more, and on a shared 2-core
    machine two spinning OpenMP threads make each step 10-30x slower. Test modules import this to make it autouse."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_pairs(path: Path, count: int = 16) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            prompt = f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"
            out.write(json.dumps({"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED}) + "\n")
    return path


def write_sft(path: Path, count: int = 16) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            out.write(json.dumps({"prompt": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})", "completion": CHOSEN}) + "\n")
    return path


def quiet(**options: Any) -> dict[str, Any]:
    """Options for a test run: no progress bar or plots unless asked (no tracker by default), checkpoints off."""
    return {"progress": False, "plots": False, "save_steps": 0, **options}


def read_records(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def records_of(output_dir: Path, split: str) -> list[dict[str, Any]]:
    return [r for r in read_records(output_dir) if r["split"] == split]


def assert_same_metrics(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float) -> None:
    """Same records (step, split, keys) with values within `tol`, timing keys aside."""
    assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x.keys() - TIMING_KEYS - {"step", "split"}:
            assert abs(x[key] - y[key]) <= tol * max(1.0, abs(x[key])), (x["step"], x["split"], key, x[key], y[key])


def config_options(config: Any) -> list[str]:
    """`config` as command-line options (used to start the same run in a subprocess)."""
    argv = []
    for f in fields(config):
        value = getattr(config, f.name)
        option = "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(option if value else "--no-" + option[2:])
        elif isinstance(value, list):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
    return argv


def kill_after_first_checkpoint(process: subprocess.Popen, output_dir: Path, timeout: float = 120.0) -> Path:
    """SIGKILL `process` as soon as a complete checkpoint appears in `output_dir`; return that checkpoint."""
    deadline = time.monotonic() + timeout
    while (checkpoint := latest_checkpoint(output_dir)) is None:
        if process.poll() is not None:
            err = process.stderr.read() if process.stderr else ""
            err = err.decode() if isinstance(err, bytes) else err
            raise AssertionError(f"the run ended before its first checkpoint: {err[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no checkpoint within the timeout")
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return checkpoint

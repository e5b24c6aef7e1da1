"""`torchrun --nproc-per-node 2` on CPU (gloo) trains like one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefalign.train.config import DPOConfig
from prefalign.train.loop import train
from prefalign.train.objectives import DPOObjective
from test_train_support import (
    assert_same_metrics,
    config_options,
    quiet,
    read_records,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)

# Why not exact: each process pads its own micro-batch to its own longest sequence and the gradient is summed across
# processes by an all-reduce, so float32 sums are rounded in a different order than in one process (about 1e-7
# relative per sum). Adam divides each update by the gradient's running RMS, which keeps these differences from
# growing, so after a few steps the metrics still agree to about 1e-6; 1e-4 leaves room for other CPUs' kernels while
# still catching any real mistake (a loss averaged per process instead of globally, a shard seen twice: > 1e-2).
TOLERANCE = 1e-4


def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 13 pairs: 10 train, 3 held out. A global batch of 4 leaves a last batch of 2 in each epoch, and the 3 eval pairs
    # split 2 + 1, so uneven shares are exercised too.
    data = write_pairs(tmp_path / "pairs.jsonl", 13)
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        max_steps=6,
        learning_rate=1e-3,
        logging_steps=1,
        eval_split=0.25,
        eval_steps=3,
        grad_accum=2,
        save_steps=3,
    )
    single = DPOConfig(**options, batch_size=2, output_dir=str(tmp_path / "one"))
    train(single, DPOObjective(single))

    pair = DPOConfig(**options, batch_size=1, output_dir=str(tmp_path / "two"))  # 2 processes x 1 x grad_accum 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "prefalign",
        "dpo",
        *config_options(pair),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # Only rank 0 writes and prints.
    assert done.stderr.count("final model in") == 1
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-3"]
    records = read_records(tmp_path / "two")
    assert_same_metrics(records, read_records(tmp_path / "one"), tol=TOLERANCE)
    assert records[-1]["rewards/margins"] > 0.1  # it trained, not merely agreed at zero

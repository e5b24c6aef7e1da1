"""The demo's three training stages (sft, reward, dpo): this checkout against an earlier commit, same data and settings.

    python benchmarks/training_stages_vs_commit.py --baseline 2047dc2 --run runs/old-demo --repeats 3

`--run` is a demo output directory made by the baseline commit: its sft_data and pairs are the data, and each training
stage's run.json holds the settings it trained with. Each stage's training command runs with that config under the
baseline (a git worktree of it, torn down afterwards) and under this checkout, alternating who goes first, each in a
fresh process with an empty PREFALIGN_HOME (so DPO's reference pass is computed and timed, as in a fresh demo). A
time is the command's whole wall time: start-up, loading, training, validation, merging and saving. It prints each
stage's median, the totals and their ratio.

The baseline's config keys that were renamed since are translated (`baseline_renames`); precision is fp32 on both
sides (the baseline had no other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = {"sft": ["sft"], "reward": ["rm", "train"], "dpo": ["dpo"]}


def baseline_renames(config: dict[str, Any]) -> dict[str, Any]:
    """The baseline's keys in today's names: trim_layers, tensorboard, and DPO's loss_type + sft_weight (one loss
    mixture today)."""
    config = dict(config)
    config["trim_heap_every_layers"] = config.pop("trim_layers", 0)
    config["report_to"] = ["tensorboard"] if config.pop("tensorboard", False) else ["none"]
    config["precision"] = "fp32"
    if "loss_type" in config:
        loss, sft_weight = config.pop("loss_type"), config.pop("sft_weight", 0.0)
        config["loss"] = loss + (f",sft:{sft_weight}" if sft_weight else "")
    return config


def stage_config(run: Path, stage: str, output_dir: Path, today: bool) -> Path:
    """A config file of `stage`'s recorded settings, writing to `output_dir`, in the baseline's or today's keys."""
    config = json.loads((run / stage / "run.json").read_text())["config"]
    config = baseline_renames(config) if today else dict(config)
    config["output_dir"], config["resume"] = str(output_dir), False
    path = output_dir.with_suffix(".yaml")
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items()))
    return path


def time_stage(source: Path, stage: str, config: Path, log: Path) -> float:
    """Wall seconds of one training command from `source` (a checkout's src directory) with `config`."""
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, PYTHONPATH=str(source), PREFALIGN_HOME=home)
        command = [sys.executable, "-m", "prefalign", *STAGES[stage], "--config", str(config)]
        start = time.perf_counter()
        with log.open("w") as out:
            done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{stage} failed (exit code {done.returncode}); its output is in {log}")
    return seconds


def measure(args: argparse.Namespace, baseline_src: Path, work: Path) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {stage: {"baseline": [], "today": []} for stage in STAGES}
    for repeat in range(args.repeats):
        for index, stage in enumerate(STAGES):
            sides = ["baseline", "today"] if (repeat + index) % 2 == 0 else ["today", "baseline"]
            for side in sides:
                output = work / f"{side}-{stage}-{repeat}"
                config = stage_config(args.run, stage, output, today=side == "today")
                source = REPO / "src" if side == "today" else baseline_src
                seconds = time_stage(source, stage, config, output.with_suffix(".log"))
                times[stage][side].append(seconds)
                print(f"run {repeat + 1} {stage:6} {side:8} {seconds:7.1f} s", flush=True)
    return times


def report(times: dict[str, dict[str, list[float]]], baseline: str) -> None:
    print(f"\nmedians of {len(times['sft']['today'])} run(s), seconds")
    print(f"  {'stage':8} {baseline:>10} {'today':>10} {'ratio':>7}")
    rows = {
        stage: [statistics.median(sides["baseline"]), statistics.median(sides["today"])]
        for stage, sides in times.items()
    }
    rows["total"] = [sum(row[0] for row in rows.values()), sum(row[1] for row in rows.values())]
    for name, (before, today) in rows.items():
        print(f"  {name:8} {before:10.1f} {today:10.1f} {today / before:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit whose demo made --run")
    parser.add_argument("--run", type=Path, required=True, help="that commit's demo output directory")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side per stage (default 3)")
    parser.add_argument(
        "--keep", type=Path, help="keep the runs' outputs and logs here (default: a temporary directory)"
    )
    args = parser.parse_args()
    missing = [stage for stage in STAGES if not (args.run / stage / "run.json").is_file()]
    if missing:
        sys.exit(
            f"{args.run}: no run.json for {', '.join(missing)}: run the baseline's demo through its dpo stage first"
        )
    with tempfile.TemporaryDirectory() as tmp:
        worktree, work = Path(tmp) / "baseline", args.keep or Path(tmp) / "runs"
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.baseline], check=True
        )
        try:
            times = measure(args, worktree / "src", work)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
    report(times, args.baseline)


if __name__ == "__main__":
    main()

"""prefalign's trainers against TRL's: SFT vs SFTTrainer, the reward model vs RewardTrainer, DPO vs DPOTrainer.

    pip install -e '.[bench]'        # TRL; this script installs nothing
    python benchmarks/trainers_vs_trl.py --trainer dpo --pairs 64 --repeats 3 --modes full lora

Both sides train SmolLM2-135M-Instruct for one epoch on the first N pairs of HH-RLHF harmless-base test (explicit
prompt: the conversation so far as messages), batch 4 per optimizer step, fp32 (or both under bf16 autocast with
`--precision bf16`), exact steps (global-norm clipping at 1.0), the same learning rate and LoRA settings; TRL at its
defaults otherwise (gradient checkpointing on, fused AdamW), bf16 set explicitly (TRL turns bf16 autocast on by
default, on CPU too). Per trainer:

* sft: prompt + chosen answer, loss on the answer only, no truncation on either side (TRL's padding-free mode
  without packing enforces no max length). TRL with `padding_free=True`: the examples of a batch flattened into one
  row, as prefalign's are; its fastest setting that keeps the same 4 examples per step (`packing` would regroup them
  into fixed-length blocks), so first steps compare. prefalign packs them into one row under per-example attention.
* reward: prompt + chosen and prompt + rejected, pairwise loss alone (`--lm-weight 0`: TRL's RewardTrainer has no LM
  term), no truncation on either side (TRL's drops pairs longer than its max length instead of truncating them).
* dpo: beta 0.1, max length 256; prefalign with `--precompute-ref` (the reference log-probs come from one no-grad pass
  of the policy before its first update, timed and counted in prefalign's time, as TRL's per-step reference forwards
  are in TRL's).

Each run is a fresh subprocess (with an empty prefalign cache), so its peak RSS (VmHWM) is its own, and the two
frameworks alternate within each repeat so that a busy machine slows both alike. Timing counts optimizer steps only
(not model loading or tokenization), plus prefalign's reference pass. "Real tokens" counts what a two-sequence
implementation processes without padding: prompt + answer of every sequence trained.

Before timing, the first run of each mode checks that the two agree, within 1e-3, on TRL's own first batch (its token
ids, since the two tokenize the chat template's end of turn differently): sft, TRL's first-step loss against
prefalign's loss of that batch; reward, the same with TRL's initial reward head, and the per-sequence rewards; dpo,
both first-step losses (ln 2, the policy still equal to its reference) and the per-sequence log-probs.
With `--precision bf16` TRL's side of that check is computed under bf16 autocast and prefalign's in fp32, so the
tolerance is 5e-2 instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trainer_runs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
AGREEMENT = 1e-3
AGREEMENT_BF16 = 5e-2  # --precision bf16: TRL's first batch is computed under bf16 autocast, the check in fp32
UNITS = {"sft": "examples", "reward": "pairs", "dpo": "pairs"}


def default_model() -> str:
    from prefalign.models.registry import models_root

    return str(models_root() / "smollm2-135m-instruct")


def peak_rss_gib() -> float:
    """This process's high-water resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker == "check":
            result = trainer_runs.run_check(args)
        else:
            run = trainer_runs.run_trl if args.worker == "trl" else trainer_runs.run_prefalign
            result = run(args, Path(tmp))
    result["peak_rss_gib"] = peak_rss_gib()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# The driver


def spawn(args: argparse.Namespace, role: str, mode: str, check: Path | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", role, "--trainer", args.trainer, "--mode", mode]
    command += ["--pairs", str(args.pairs), "--model", args.model, "--data", args.data, "--precision", args.precision]
    if check is not None:
        command += ["--check", str(check)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{role} ({args.trainer}, {mode}) failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def agree(args: argparse.Namespace, mode: str, trl: dict[str, Any], ours: dict[str, Any], tmp: Path) -> None:
    """Stop before timing unless prefalign computes what TRL computes on TRL's first batch (see the docstring)."""
    dump = tmp / f"trl-first-batch-{args.trainer}-{mode}.json"
    dump.write_text(json.dumps(trl["check"]))
    check = spawn(args, "check", mode, dump)
    tag = f"[{args.trainer} {mode}]"
    if args.trainer == "dpo":
        loss_diff = abs(trl["first_loss"] - ours["first_loss"])
        print(
            f"{tag} first-step loss: TRL {trl['first_loss']:.6f}, prefalign {ours['first_loss']:.6f} "
            f"(ln 2 = {math.log(2):.6f})"
        )
    else:
        loss_diff = abs(trl["first_loss"] - check["loss"])
        print(
            f"{tag} first-step loss on TRL's first batch: TRL {trl['first_loss']:.6f}, prefalign {check['loss']:.6f}; "
            f"prefalign's own first step {ours['first_loss']:.6f}"
        )
    print(f"{tag} |loss diff| {loss_diff:.2e}")
    sequence_diff = check.get("max_abs_diff", 0.0)
    if "max_abs_diff" in check:
        print(f"{tag} per-sequence {check['what']} of TRL's first batch: max |diff| {sequence_diff:.2e}")
    tolerance = AGREEMENT if args.precision == "fp32" else AGREEMENT_BF16
    if loss_diff > tolerance or sequence_diff > tolerance:
        sys.exit(f"{tag} TRL and prefalign disagree beyond {tolerance}: stopping before timing")


def rates(run: dict[str, Any]) -> dict[str, float]:
    return {
        "items/s": run["items"] / run["seconds"],
        "tokens/s": run["tokens"] / run["seconds"],
        "rss": run["peak_rss_gib"],
    }


def report(trainer: str, mode: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    medians = {
        name: {key: statistics.median(rates(r)[key] for r in rs) for key in ("items/s", "tokens/s", "rss")}
        for name, rs in runs.items()
    }
    trl, ours, unit = medians["trl"], medians["prefalign"], UNITS[trainer]
    print(
        f"\n{trainer} {mode}: medians of {len(runs['trl'])} run(s), {runs['trl'][0]['items']} {unit} (TRL) / "
        f"{runs['prefalign'][0]['items']} {unit} (prefalign)"
    )
    print(f"  {'':10} {unit + '/s':>10} {'tokens/s':>9} {'peak RSS GiB':>13}")
    for name, row in (("TRL", trl), ("prefalign", ours)):
        print(f"  {name:10} {row['items/s']:10.3f} {row['tokens/s']:9.1f} {row['rss']:13.2f}")
    print(
        f"  {'ratio':10} {ours['items/s'] / trl['items/s']:9.2f}x {ours['tokens/s'] / trl['tokens/s']:8.2f}x "
        f"{ours['rss'] / trl['rss']:12.2f}x"
    )


def compare(args: argparse.Namespace, mode: str, tmp: Path) -> None:
    runs: dict[str, list[dict[str, Any]]] = {"trl": [], "prefalign": []}
    for repeat in range(args.repeats):
        order = ("trl", "prefalign") if repeat % 2 == 0 else ("prefalign", "trl")
        for name in order:
            runs[name].append(spawn(args, name, mode))
            rate = rates(runs[name][-1])
            print(
                f"[{args.trainer} {mode}] run {repeat + 1} {name}: {rate['items/s']:.3f} {UNITS[args.trainer]}/s, "
                f"{rate['tokens/s']:.1f} tokens/s, peak {rate['rss']:.2f} GiB",
                flush=True,
            )
        if repeat == 0:
            agree(args, mode, runs["trl"][0], runs["prefalign"][0], tmp)
    report(args.trainer, mode, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer", choices=sorted(UNITS), default="dpo", help="what to compare (default dpo)")
    parser.add_argument("--pairs", type=int, default=64, help="first N pairs of the data (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each framework per mode (default 3)")
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--model", default=None, help="HF model directory (default: the pulled SmolLM2-135M)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HH-RLHF jsonl(.gz) file")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="both sides in fp32 (default) or under bf16 autocast (TRL's bf16=True, prefalign's --precision bf16)",
    )
    parser.add_argument("--worker", choices=["trl", "prefalign", "check"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--check", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or default_model()
    if args.worker:
        worker(args)
        return
    try:
        import trl  # noqa: F401  (imported only to check that TRL is installed)
    except ImportError:
        sys.exit("TRL is not installed: pip install -e '.[bench]'")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            compare(args, mode, Path(tmp))


if __name__ == "__main__":
    main()

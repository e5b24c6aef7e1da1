"""`prefalign compare`: train several preference methods on the same pairs from the same SFT model, evaluate them
all in one report."""

from __future__ import annotations

import argparse
import time

from ..config import add_config_args, config_from_args
from ..console import say
from ..pipeline.compare import CompareConfig

_DESCRIPTION = """\
Train each of --methods (a --loss of `prefalign dpo`: sigmoid, simpo, orpo, kto, apo_zero, a mixture, ...) from
--model, the SFT model, on the pairs of --data with the same steps, batch, learning rate, beta and seed, then evaluate
every method against the SFT model and against each other on --prompts (`prefalign eval`'s report: win rates, judges'
scores, KL from the SFT model, lengths, and with --eval-data the implicit-reward accuracy on held-out pairs, all with
95% intervals). Runs go to OUTPUT_DIR/train/METHOD (reused when run again with the same settings), the report to
OUTPUT_DIR/eval/report.md."""

_EXAMPLE = """\
example:
  prefalign compare --model runs/demo/sft/final/merged --data runs/demo/pairs/train.jsonl \\
      --eval-data runs/demo/pairs/heldout.jsonl --prompts builtin:heldout --limit 50 \\
      --methods sigmoid simpo orpo kto apo_zero --max-steps 60 --output-dir runs/compare"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train several preference methods the same way and compare them in one report",
        description=_DESCRIPTION,
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of options (keys as the long options); the command line wins")
    add_config_args(parser, CompareConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.report_md import markdown_summary
    from ..pipeline.compare import run_compare

    config = config_from_args(CompareConfig, args)
    started = time.perf_counter()
    report = run_compare(config)
    print(markdown_summary(report))
    say(f"done in {time.perf_counter() - started:.1f}s; report: {config.output_dir}/eval/report.md")
    return 0

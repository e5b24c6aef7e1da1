"""`prefalign eval`: compare models (base, SFT, SFT+DPO, ...) on the same prompts, with 95% intervals everywhere."""

from __future__ import annotations

import argparse
import time

from ..config import add_config_args, build_config, config_from_args
from ..console import say
from ..evaluate.config import EvalConfig
from ..generate import GenerationConfig
from ..preflight import check_input, check_output_dir

_DESCRIPTION = """\
Generate with every --model on the same prompts (same decoding settings and seed; greedy by default), then measure:
instruction following (the verifier, strict and loose, per prompt and per instruction), response length, refusals,
repetition, each --judge's score, pairwise win rates of each model over its baseline (with a length-controlled win
rate), the KL of each model from the first (base) model, and with --pairs the implicit-reward accuracy on held-out
preference pairs. Every number comes with a 95% interval. Writes OUTPUT_DIR/report.md (printed at the end),
report.csv, report.json, report.html, responses.jsonl and plots/; generations are cached per model in
OUTPUT_DIR/cache, so adding a model later generates for that model only."""

_EXAMPLE = """\
example:
  prefalign eval --model base=smollm2-135m-instruct --model sft=runs/sft/final --model dpo=runs/dpo/final \\
      --prompts builtin:heldout --limit 100 --pairs heldout_pairs.jsonl --run sft=runs/sft --run dpo=runs/dpo \\
      --output-dir runs/eval"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare models on the same prompts and write a report",
        description=_DESCRIPTION,
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="YAML", help="YAML file of decoding options (command-line options override it)"
    )
    add_config_args(parser, EvalConfig, require=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.report_md import markdown_summary
    from ..evaluate.run import run_evaluation

    # The YAML file holds decoding options only; the other options come from the command line.
    generation = config_from_args(GenerationConfig, args)
    config = build_config(EvalConfig, overrides={**vars(args), "generation": generation})
    started = time.perf_counter()
    _check(config)
    report = run_evaluation(config)
    print(markdown_summary(report))
    out = config.output_dir
    print(f"full report: {out / 'report.md'}, {out / 'report.html'} (also report.csv, report.json, responses.jsonl)")
    say(f"done in {time.perf_counter() - started:.1f}s", prefix="[eval] ")
    return 0


def _check(config: EvalConfig) -> None:
    """What an evaluation can check before it loads anything: where it writes, the models, the files it reads."""
    from ..errors import ModelError
    from ..evaluate.models import resolve_source
    from ..evaluate.prompt_set import BUILTIN

    check_output_dir(config.output_dir)
    if config.cache_dir is not None:
        check_output_dir(config.cache_dir, "--cache-dir")
    for label, spec in config.models:
        try:
            resolve_source(spec)
        except ModelError as exc:
            raise ModelError(f"--model {label}={spec}: {exc}") from None
    if config.prompts != BUILTIN and not config.prompts.startswith(BUILTIN + ":"):
        check_input(config.prompts, "--prompts")
    if config.pairs is not None:
        check_input(config.pairs, "--pairs", "file or directory")
    for directory in config.runs.values():
        check_input(directory, "--run", "directory")

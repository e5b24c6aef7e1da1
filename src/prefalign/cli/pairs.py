"""`prefalign pairs build` and `prefalign pairs stats`: preference pairs from your own model, picked by a judge."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import add_config_args, build_config, config_from_args
from ..console import say
from ..judges.options import JudgeOptions
from ..models.loading import check_model
from ..models.options import ModelOptions
from ..pairs.build import BuildReport, PairsConfig  # light: no torch at import
from ..preflight import check_input, check_output_file


@dataclass
class PairsBuildOptions:
    """`prefalign pairs build`'s options besides the sampling ones (`PairsConfig`, also from --config)."""

    model_options: ModelOptions
    prompts: Path = field(
        metadata={
            "help": "JSON Lines of prompts: `prompt`, optional `id`, and fields for the judge (`instruction_id_list`, "
            "`kwargs` for the verifier); see `prefalign prompts builtin`",
            "metavar": "FILE",
        }
    )
    judge: str = field(metadata={"help": "verifier, verifier:loose, openai:MODEL or anthropic:MODEL"})
    output: Path = field(metadata={"help": "the pairs .jsonl file", "metavar": "OUT", "flags": ("-o",)})
    judge_options: JudgeOptions = field(default_factory=JudgeOptions)


@dataclass
class PairsStatsOptions:
    """`prefalign pairs stats`'s options."""

    path: str = field(
        metadata={"help": "a pairs .jsonl file (any preference file works)", "metavar": "FILE", "positional": True}
    )
    json: bool = field(default=False, metadata={"help": "print machine-readable JSON instead of a table"})


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pairs", help="build preference pairs with a judge, and describe them")
    commands = parser.add_subparsers(dest="pairs_command", metavar="ACTION", required=True)

    build = commands.add_parser(
        "build",
        help="sample responses from a model and let a judge pick the preferred one",
        description="For each prompt, sample --num-samples responses (sample j at temperature "
        "temperatures[j mod len], seed + j); the judge prefers one of two, or the best over the worst of more. Pairs "
        "go to OUT, prompts that gave none (ties, judge failures, identical answers) to OUT.skipped.jsonl. Both are "
        "appended batch by batch: rerun the same command after an interruption to resume.",
    )
    build.add_argument("--config", help="YAML file of sampling options (command-line options override it)")
    add_config_args(build, PairsBuildOptions, require=True, from_file=False)
    add_config_args(build, PairsConfig)
    build.set_defaults(func=run_build)

    stats = commands.add_parser(
        "stats",
        help="counts, tie rate, scores and length bias of a pairs file",
        description="Describe a pairs file: pairs, skipped prompts by reason and the tie rate (from "
        "FILE.skipped.jsonl), chosen vs rejected scores and lengths (the fraction of pairs whose chosen answer is "
        "longer: length bias), the sampling temperature of the chosen answers and per-instruction pass rates.",
    )
    add_config_args(stats, PairsStatsOptions, from_file=False)
    stats.set_defaults(func=run_stats)


def run_build(args: argparse.Namespace) -> int:
    from ..judges.registry import load_judge
    from ..pairs.build import build_pairs, check_output_path, read_prompt_records, skipped_path

    options = build_config(PairsBuildOptions, overrides=vars(args))  # the YAML file holds sampling options only
    config = config_from_args(PairsConfig, args)
    check_output_path(options.output)
    check_output_file(options.output)
    check_output_file(skipped_path(options.output))
    check_input(options.prompts, "--prompts")
    check_model(options.model_options.model)
    prompts = read_prompt_records(options.prompts, config.limit)
    judge = load_judge(options.judge, **options.judge_options.load_kwargs())
    try:
        model, tokenizer = options.model_options.load()

        def progress(report: BuildReport) -> None:
            say(report.progress(), prefix="")

        report = build_pairs(
            model,
            tokenizer,
            judge,
            prompts,
            options.output,
            config,
            model_name=options.model_options.model,
            on_batch=progress,
        )
    finally:
        judge.close()
    print(report.summary())
    print(f"pairs in {options.output}; prompts without a pair in {skipped_path(options.output)}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from ..pairs.stats import format_stats, pair_stats

    options = build_config(PairsStatsOptions, overrides=vars(args))
    stats = pair_stats(check_input(options.path, None))
    print(json.dumps(stats, indent=2, ensure_ascii=False) if options.json else format_stats(stats))
    return 0

"""`prefalign pairs build` and `prefalign pairs stats`: preference pairs from your own model, picked by a judge."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..pairs.build import PairsConfig  # light: no torch at import

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
    build.add_argument("--model", required=True, help="registered name, local HF directory or hub id (org/name)")
    build.add_argument(
        "--prompts",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSON Lines of prompts: `prompt`, optional `id`, and fields for the judge "
        "(`instruction_id_list`, `kwargs` for the verifier); see `prefalign prompts builtin`",
    )
    build.add_argument("--judge", required=True, help="verifier, verifier:loose, openai:MODEL or anthropic:MODEL")
    build.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="the pairs .jsonl file")
    build.add_argument("--config", help="YAML file of sampling options (command-line options override it)")
    build.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's repository to run its own Python code"
    )
    add_config_args(build, PairsConfig)
    judge = build.add_argument_group("LLM judges (openai:, anthropic:)")
    judge.add_argument("--judge-base-url", help="API endpoint, e.g. http://127.0.0.1:8000/v1 for a local vLLM")
    judge.add_argument("--judge-api-key-env", help="environment variable holding the API key")
    judge.add_argument("--judge-template", help="file with the pairwise judging prompt template")
    judge.add_argument("--judge-cache", help="SQLite file caching judge answers (default: in PREFALIGN_HOME)")
    judge.add_argument("--judge-concurrency", type=int, help="requests in flight (default: 4)")
    judge.add_argument("--judge-timeout", type=float, help="seconds per request (default: 60)")
    judge.add_argument("--judge-max-retries", type=int, help="retries on 429, 5xx and timeouts (default: 5)")
    build.set_defaults(func=run_build)

    stats = commands.add_parser(
        "stats",
        help="counts, tie rate, scores and length bias of a pairs file",
        description="Describe a pairs file: pairs, skipped prompts by reason and the tie rate (from "
        "FILE.skipped.jsonl), chosen vs rejected scores and lengths (the fraction of pairs whose chosen answer is "
        "longer: length bias), the sampling temperature of the chosen answers and per-instruction pass rates.",
    )
    stats.add_argument("path", metavar="FILE", help="a pairs .jsonl file (any preference file works)")
    stats.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    stats.set_defaults(func=run_stats)


def run_build(args: argparse.Namespace) -> int:
    from ..judges.registry import load_judge
    from ..models.loading import load_model, load_tokenizer
    from ..pairs.build import PairsConfig, build_pairs, check_output_path, read_prompt_records, skipped_path

    config = config_from_args(PairsConfig, args)
    check_output_path(args.output)
    prompts = read_prompt_records(args.prompts, config.limit)
    options = {
        "base_url": args.judge_base_url,
        "api_key_env": args.judge_api_key_env,
        "template": args.judge_template,
        "cache_path": args.judge_cache,
        "concurrency": args.judge_concurrency,
        "timeout": args.judge_timeout,
        "max_retries": args.judge_max_retries,
    }
    # Only what the user typed: the verifier refuses HTTP options, and load_judge has its own defaults.
    judge = load_judge(args.judge, **{name: value for name, value in options.items() if value is not None})
    try:
        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
        model = load_model(args.model, trust_remote_code=args.trust_remote_code)

        def progress(report) -> None:
            print(
                f"{report.done}/{report.prompts} prompts done: {report.pairs} pairs, {report.ties} ties, "
                f"{report.judge_failures} judge failures",
                file=sys.stderr,
            )

        report = build_pairs(
            model, tokenizer, judge, prompts, args.output, config, model_name=args.model, on_batch=progress
        )
    finally:
        judge.close()
    print(report.summary())
    print(f"pairs in {args.output}; prompts without a pair in {skipped_path(args.output)}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from ..pairs.stats import format_stats, pair_stats

    stats = pair_stats(args.path)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    return 0

"""`prefalign eval`: compare models (base, SFT, SFT+DPO, ...) on the same prompts, with 95% intervals everywhere."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import add_config_args, config_from_args
from ..generate import GenerationConfig

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
    what = parser.add_argument_group("what to compare")
    what.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="LABEL=SPEC",
        help="a model (registered name, HF directory, LoRA adapter directory, training run directory "
        "or hub id) and its column label; repeat, the base model first",
    )
    what.add_argument(
        "--prompts",
        required=True,
        metavar="FILE",
        help="prompts: a .jsonl/.json/.txt file (records may carry id, instruction_id_list and "
        "kwargs), or builtin[:heldout|train|all] for the built-in set (builtin = held-out)",
    )
    what.add_argument("--limit", type=int, metavar="N", help="evaluate the first N prompts only")
    what.add_argument(
        "--baseline",
        action="append",
        metavar="MODEL:BASELINE",
        help="compare MODEL with BASELINE (repeat; the first pair is the table's Δ column). "
        "Default: each model with the one listed before it, last first (base, sft, dpo: dpo:sft, "
        "sft:base)",
    )
    what.add_argument("-o", "--output-dir", required=True, type=Path, help="where the report is written")
    what.add_argument("--cache-dir", type=Path, metavar="DIR", help="generation cache (default: OUTPUT_DIR/cache)")
    what.add_argument(
        "--run",
        action="append",
        metavar="LABEL=DIR",
        help="a training run directory (with metrics.jsonl) whose curves go into the report",
    )
    what.add_argument(
        "--trust-remote-code", action="store_true", help="allow models' repositories to run their own Python code"
    )

    judging = parser.add_argument_group("judges")
    judging.add_argument(
        "--judge",
        action="append",
        metavar="SPEC",
        help="verifier, verifier:loose, openai:MODEL, anthropic:MODEL, ... (repeat). Default: the "
        "verifier when the prompts carry verifiable instructions",
    )
    judging.add_argument(
        "--judge-base-url", metavar="URL", help="endpoint of an OpenAI-compatible judge (vLLM, llama.cpp, Ollama)"
    )
    judging.add_argument("--judge-api-key-env", metavar="VAR", help="environment variable holding the judge's key")
    judging.add_argument("--judge-template", type=Path, metavar="FILE", help="pairwise judge template file")
    judging.add_argument(
        "--judge-score-template", type=Path, metavar="FILE", help="pointwise (1-5) judge template file"
    )
    judging.add_argument("--judge-cache", type=Path, metavar="FILE", help="SQLite cache of judge answers")
    judging.add_argument(
        "--judge-concurrency", type=int, default=4, metavar="N", help="judge requests in flight (default: 4)"
    )
    judging.add_argument(
        "--judge-timeout", type=float, default=60.0, metavar="SECONDS", help="seconds per judge request (default: 60)"
    )

    heldout = parser.add_argument_group("held-out pairs and drift")
    heldout.add_argument(
        "--pairs",
        metavar="FILE",
        help="held-out preference pairs: implicit-reward accuracy of the "
        "models listed after --reference, and each judge's accuracy",
    )
    heldout.add_argument("--pairs-limit", type=int, metavar="N", help="use the first N pairs only")
    heldout.add_argument(
        "--reference",
        metavar="LABEL",
        help="reference model of the implicit reward (default: the first baseline pair's baseline)",
    )
    heldout.add_argument("--beta", type=float, default=0.1, help="DPO beta of the implicit reward (default: 0.1)")
    heldout.add_argument(
        "--kl-samples",
        type=int,
        default=2,
        metavar="K",
        help="responses sampled per prompt (temperature 1) to estimate each model's KL from the "
        "base; 0 skips the KL (default: 2)",
    )
    heldout.add_argument(
        "--kl-max-new-tokens",
        type=int,
        default=64,
        metavar="N",
        help="token budget of those samples: the KL covers the first N tokens (default: 64)",
    )

    decoding = parser.add_argument_group("decoding (the same for every model)")
    decoding.add_argument(
        "--config", metavar="YAML", help="YAML file of decoding options (command-line options override it)"
    )
    add_config_args(decoding, GenerationConfig)  # type: ignore[arg-type]  # an argument group takes add_argument too
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.config import EvalConfig, parse_baseline, parse_labelled

    config = EvalConfig(
        models=[parse_labelled(text, "--model") for text in args.model],
        prompts=args.prompts,
        output_dir=args.output_dir,
        generation=config_from_args(GenerationConfig, args),
        judges=args.judge or [],
        judge_options={
            key: value
            for key, value in {
                "base_url": args.judge_base_url,
                "api_key_env": args.judge_api_key_env,
                "template": args.judge_template,
                "score_template": args.judge_score_template,
                "cache_path": args.judge_cache,
                "concurrency": args.judge_concurrency,
                "timeout": args.judge_timeout,
            }.items()
            if value is not None
        },
        baselines=[parse_baseline(text) for text in args.baseline] if args.baseline else None,
        pairs=args.pairs,
        pairs_limit=args.pairs_limit,
        reference=args.reference,
        beta=args.beta,
        runs=dict(parse_labelled(text, "--run") for text in args.run or []),
        limit=args.limit,
        kl_samples=args.kl_samples,
        kl_max_new_tokens=args.kl_max_new_tokens,
        cache_dir=args.cache_dir,
        trust_remote_code=args.trust_remote_code,
    )
    started = time.perf_counter()

    from ..evaluate.report_md import markdown_summary
    from ..evaluate.run import run_evaluation

    report = run_evaluation(config)
    print(markdown_summary(report))
    out = config.output_dir
    print(f"full report: {out / 'report.md'}, {out / 'report.html'} (also report.csv, report.json, responses.jsonl)")
    print(f"[eval] done in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0

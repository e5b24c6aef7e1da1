"""`prefalign generate`: complete prompts with a model, through the one generation path."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..config import add_config_args, config_from_args
from ..data.prompt_files import check_prompt, read_prompts
from ..fileio import write_jsonl_atomic
from ..generate import GenerationConfig

# Fields the output adds to each input record; an input record may not carry them already.
OUTPUT_FIELDS = ("response", "finish_reason", "num_tokens", "model", "generation")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="complete prompts with a model",
        description="Generate a response for each prompt. Prompts come from --prompt or from --prompts FILE: .jsonl "
        "or .json records with a `prompt` field (a string or a list of chat messages; other fields are kept), or .txt "
        "with one prompt per line. With -o, writes JSON Lines (the input fields plus response, finish_reason, "
        "num_tokens, model and the generation settings); without it, prints the responses.",
    )
    parser.add_argument("--model", required=True, help="registered name, local HF directory or hub id (org/name)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", type=Path, metavar="FILE", help="a .jsonl, .json or .txt file of prompts")
    source.add_argument("--prompt", help="a single prompt")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT", help="write results as JSON Lines to this file")
    parser.add_argument("--config", help="YAML file of generation options (command-line options override it)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's repository to run its own Python code"
    )
    add_config_args(parser, GenerationConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(GenerationConfig, args)
    if args.prompt is not None:
        records = [{"prompt": check_prompt(args.prompt, "--prompt")}]
    else:
        records = read_prompts(args.prompts, reserved=OUTPUT_FIELDS, writer="generate")

    from ..generate import generate
    from ..models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, trust_remote_code=args.trust_remote_code)
    generations = generate(model, tokenizer, [r["prompt"] for r in records], config)

    if args.output is None:
        for generation in generations:
            print(generation.text)
        return 0
    settings = dataclasses.asdict(config)
    rows = [
        {
            **record,
            "response": generation.text,
            "finish_reason": generation.finish_reason,
            "num_tokens": generation.num_tokens,
            "model": args.model,
            "generation": settings,
        }
        for record, generation in zip(records, generations)
    ]
    write_jsonl_atomic(args.output, rows)
    print(f"wrote {len(rows)} generations to {args.output}", file=sys.stderr)
    return 0

"""`prefalign generate`: complete prompts with a model, through the one generation path."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import add_config_args, build_config, config_from_args
from ..console import say
from ..data.prompt_files import check_prompt, read_prompts
from ..fileio import write_jsonl_atomic
from ..generate import GenerationConfig, generate
from ..models.loading import check_model
from ..models.options import ModelOptions
from ..preflight import check_input, check_output_file

# Fields the output adds to each input record; an input record may not carry them already.
OUTPUT_FIELDS = ("response", "finish_reason", "num_tokens", "model", "generation")


@dataclass
class GenerateOptions:
    """`prefalign generate`'s options besides the decoding ones (`GenerationConfig`, also from --config)."""

    model_options: ModelOptions
    prompts: Path | None = field(
        default=None,
        metadata={"help": "a .jsonl, .json or .txt file of prompts", "metavar": "FILE", "one_of": "prompt source"},
    )
    prompt: str | None = field(default=None, metadata={"help": "a single prompt", "one_of": "prompt source"})
    output: Path | None = field(
        default=None, metadata={"help": "write results as JSON Lines to this file", "metavar": "OUT", "flags": ("-o",)}
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="complete prompts with a model",
        description="Generate a response for each prompt. Prompts come from --prompt or from --prompts FILE: .jsonl "
        "or .json records with a `prompt` field (a string or a list of chat messages; other fields are kept), or .txt "
        "with one prompt per line. With -o, writes JSON Lines (the input fields plus response, finish_reason, "
        "num_tokens, model and the generation settings); without it, prints the responses.",
    )
    add_config_args(parser, GenerateOptions, require=True, from_file=False)
    parser.add_argument("--config", help="YAML file of generation options (command-line options override it)")
    add_config_args(parser, GenerationConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = build_config(GenerateOptions, overrides=vars(args))  # the YAML file holds generation options only
    config = config_from_args(GenerationConfig, args)
    if options.output is not None:
        check_output_file(options.output)  # before generating: a write that fails after it would lose the answers
    if options.prompts is not None:
        check_input(options.prompts, "--prompts")
    check_model(options.model_options.model)
    if options.prompt is not None:
        records = [{"prompt": check_prompt(options.prompt, "--prompt")}]
    else:
        records = read_prompts(options.prompts, reserved=OUTPUT_FIELDS, writer="generate")

    model, tokenizer = options.model_options.load()
    generations = generate(model, tokenizer, [r["prompt"] for r in records], config)

    if options.output is None:
        for generation in generations:
            print(generation.text)
        return 0
    settings = asdict(config)
    rows = [
        {
            **record,
            "response": generation.text,
            "finish_reason": generation.finish_reason,
            "num_tokens": generation.num_tokens,
            "model": options.model_options.model,
            "generation": settings,
        }
        for record, generation in zip(records, generations)
    ]
    write_jsonl_atomic(options.output, rows)
    say(f"wrote {len(rows)} generations to {options.output}", prefix="")
    return 0

"""`prefalign generate`: complete prompts with a model, through the one generation path."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..config import add_config_args, config_from_args
from ..errors import DataError, PrefalignError
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


def _check_prompt(value: Any, location: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(location, "empty prompt")
        return value
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DataError(location, f"prompt message {i + 1} is not a {{role, content}} pair of strings")
        return value
    raise DataError(location, "`prompt` must be a string or a non-empty list of {role, content} messages")


def _record(value: Any, location: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(location, f"expected a JSON object with a `prompt` field, got {type(value).__name__}")
    if "prompt" not in value:
        raise DataError(location, "missing field `prompt`")
    clashes = [name for name in OUTPUT_FIELDS if name in value]
    if clashes:
        raise DataError(location, f"field `{clashes[0]}` is written by generate; rename it in the input")
    _check_prompt(value["prompt"], location)
    return value


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """The records of a prompts file, each with a valid `prompt`; DataError naming file:line on the first bad one."""
    if not path.is_file():
        raise PrefalignError(f"{path}: prompts file not found")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".txt"):
        raise PrefalignError(f"{path}: prompts must be a .jsonl, .json or .txt file")
    text = path.read_text(encoding="utf-8")
    records = []
    if suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg})") from None
        if not isinstance(items, list):
            raise DataError(str(path), "a .json prompts file must hold a list of objects")
        records = [_record(item, f"{path}: item {i + 1}") for i, item in enumerate(items)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            location = f"{path}:{number}"
            if suffix == ".txt":
                records.append({"prompt": line})
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(location, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            records.append(_record(value, location))
    if not records:
        raise PrefalignError(f"{path}: no prompts in this file")
    return records


def run(args: argparse.Namespace) -> int:
    config = config_from_args(GenerationConfig, args)
    if args.prompt is not None:
        records = [{"prompt": _check_prompt(args.prompt, "--prompt")}]
    else:
        records = read_prompts(args.prompts)

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

"""`prefalign data inspect` and `prefalign data convert`: look at a preference file, or normalise it to JSON Lines."""

from __future__ import annotations

import argparse
import json

from ..errors import PrefalignError

FORMAT_CHOICES = ("auto", "hh", "explicit", "conversational")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect and convert preference data")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="count, validate and measure a preference data set",
        description="Report records read, kept and rejected (by reason, with locations), length percentiles, "
        "truncation at a max length (with --model) and duplicates. Exits 0 whenever the source can be read.",
    )
    _add_source_args(inspect)
    inspect.add_argument(
        "--model",
        help="count tokens with this model's tokenizer: registered name, local HF directory or hub id (org/name)",
    )
    inspect.add_argument("--max-length", type=_positive_int, help="max tokens of prompt + completion (needs --model)")
    inspect.add_argument("--max-prompt-length", type=_positive_int, help="max tokens of the prompt (needs --model)")
    inspect.add_argument(
        "--prompt-format",
        choices=("auto", "chat", "raw"),
        default="auto",
        help="how prompts become tokens (with --model): chat template, raw text, or auto (default: auto)",
    )
    inspect.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    inspect.set_defaults(func=run_inspect)

    convert = commands.add_parser(
        "convert",
        help="write a preference data set as normalised JSON Lines",
        description="Validate SOURCE and write its good records to OUT as JSON Lines of prompt, chosen, rejected "
        "and extra fields; the result loads back unchanged.",
    )
    _add_source_args(convert)
    convert.add_argument("-o", "--output", metavar="OUT", required=True, help="the .jsonl (or .jsonl.gz) file to write")
    convert.add_argument(
        "--to",
        choices=("explicit", "conversational"),
        help="explicit: string completions; conversational: prompt and completions as chat messages "
        "(default: keep each record's shape)",
    )
    convert.add_argument(
        "--max-bad-fraction",
        type=_fraction,
        default=0.05,
        help="fail when more than this fraction of records is bad (default: 0.05)",
    )
    convert.set_defaults(func=run_convert)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help=".jsonl[.gz], .json, .parquet, .csv or a saved datasets dir")
    parser.add_argument("--format", choices=FORMAT_CHOICES, default="auto", help="record format (default: auto)")
    parser.add_argument("--split", help="split of a saved DatasetDict (default: train, or the only one)")
    parser.add_argument("--strict", action="store_true", help="stop with an error at the first bad record")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value}")
    return value


def run_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import format_inspection, inspect_preferences
    from ..data.loading import load_preferences

    if args.model is None and (args.max_length or args.max_prompt_length):
        raise PrefalignError("--max-length and --max-prompt-length count tokens: give a tokenizer with --model")
    # Inspect reports bad records rather than failing on them, so no --max-bad-fraction here.
    data = load_preferences(args.source, args.format, strict=args.strict, max_bad_fraction=None, split=args.split)
    tokenizer = None
    if args.model is not None:
        from ..models.loading import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    summary = inspect_preferences(data, tokenizer, args.max_length, args.max_prompt_length, args.prompt_format)
    if args.model is not None:
        summary["model"] = args.model
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_inspection(summary))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..data.formats import to_conversational, to_explicit
    from ..data.inspect import format_rejections, summarize_rejections
    from ..data.loading import load_preferences, save_preferences

    data = load_preferences(
        args.source, args.format, strict=args.strict, max_bad_fraction=args.max_bad_fraction, split=args.split
    )
    report = data.report
    if not data.records:
        # An empty output would be a file `load_preferences` refuses; better to say so now.
        raise PrefalignError(
            f"{report.source}: all {report.read} records are bad, nothing to write; first: {report.rejections[0]}"
        )
    reshape = {"explicit": to_explicit, "conversational": to_conversational}.get(args.to)
    records = data.records if reshape is None else (reshape(record) for record in data.records)
    written = save_preferences(records, args.output)
    print(f"wrote {written} records to {args.output}; rejected {report.rejected} of {report.read} read")
    for line in format_rejections(summarize_rejections(report, first_locations=3), report.source):
        print(line)
    return 0

"""`prefalign data inspect` and `prefalign data convert`: look at a preference file, or normalise it to JSON Lines."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

from ..config import add_config_args, build_config
from ..data.loading import PreferenceData, load_preferences, save_preferences
from ..data.tokenize import PromptFormat
from ..errors import PrefalignError
from ..preflight import check_output_file

RecordFormat = Literal["auto", "hh", "explicit", "conversational"]


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


@dataclass
class PreferenceSource:
    """The preference file both actions read, and how to read it."""

    source: str = field(
        metadata={
            "help": ".jsonl[.gz], .json, .parquet, .csv or a saved datasets dir",
            "metavar": "SOURCE",
            "positional": True,
        }
    )
    format: RecordFormat = field(default="auto", metadata={"help": "record format"})
    split: str | None = field(
        default=None, metadata={"help": "split of a saved DatasetDict (default: train, or the only one)"}
    )
    strict: bool = field(default=False, metadata={"help": "stop with an error at the first bad record"})

    def load(self, max_bad_fraction: float | None) -> PreferenceData:
        """The good records, and the report of the bad ones; more than `max_bad_fraction` bad (unless None) fails."""
        return load_preferences(
            self.source, self.format, strict=self.strict, max_bad_fraction=max_bad_fraction, split=self.split
        )


@dataclass
class InspectOptions:
    """`prefalign data inspect`'s options."""

    data: PreferenceSource
    model: str | None = field(
        default=None,
        metadata={
            "help": "count tokens with this model's tokenizer: registered name, local HF directory or hub id (org/name)"
        },
    )
    max_length: int | None = field(
        default=None, metadata={"help": "max tokens of prompt + completion (needs --model)", "parse": _positive_int}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "max tokens of the prompt (needs --model)", "parse": _positive_int}
    )
    prompt_format: PromptFormat = field(
        default="auto",
        metadata={"help": "how prompts become tokens (with --model): chat template, raw text, or auto"},
    )
    json: bool = field(default=False, metadata={"help": "print machine-readable JSON instead of a table"})


@dataclass
class ConvertOptions:
    """`prefalign data convert`'s options."""

    data: PreferenceSource
    output: str = field(
        metadata={"help": "the .jsonl (or .jsonl.gz) file to write", "metavar": "OUT", "flags": ("-o",)}
    )
    to: Literal["explicit", "conversational"] | None = field(
        default=None,
        metadata={
            "help": "explicit: string completions; conversational: prompt and completions as chat messages "
            "(default: keep each record's shape)"
        },
    )
    max_bad_fraction: float = field(
        default=0.05,
        metadata={"help": "fail when more than this fraction of records is bad", "parse": _fraction},
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect and convert preference data")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="count, validate and measure a preference data set",
        description="Report records read, kept and rejected (by reason, with locations), length percentiles, "
        "truncation at a max length (with --model) and duplicates. Exits 0 whenever the source can be read.",
    )
    add_config_args(inspect, InspectOptions, require=True, from_file=False)
    inspect.set_defaults(func=run_inspect)

    convert = commands.add_parser(
        "convert",
        help="write a preference data set as normalised JSON Lines",
        description="Validate SOURCE and write its good records to OUT as JSON Lines of prompt, chosen, rejected "
        "and extra fields; the result loads back unchanged.",
    )
    add_config_args(convert, ConvertOptions, require=True, from_file=False)
    convert.set_defaults(func=run_convert)


def run_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import format_inspection, inspect_preferences

    options = build_config(InspectOptions, overrides=vars(args))
    if options.model is None and (options.max_length or options.max_prompt_length):
        raise PrefalignError("--max-length and --max-prompt-length count tokens: give a tokenizer with --model")
    if options.model is not None:
        from ..models.loading import check_model

        check_model(options.model)  # before reading the data, which may take a while
    # Inspect reports bad records rather than failing on them, so no --max-bad-fraction here.
    data = options.data.load(max_bad_fraction=None)
    tokenizer = None
    if options.model is not None:
        from ..models.loading import load_tokenizer

        tokenizer = load_tokenizer(options.model)
    summary = inspect_preferences(data, tokenizer, options.max_length, options.max_prompt_length, options.prompt_format)
    if options.model is not None:
        summary["model"] = options.model
    print(json.dumps(summary, indent=2, ensure_ascii=False) if options.json else format_inspection(summary))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..data.formats import to_conversational, to_explicit
    from ..data.inspect import format_rejections, summarize_rejections

    options = build_config(ConvertOptions, overrides=vars(args))
    check_output_file(options.output, create_parent=False)
    data = options.data.load(options.max_bad_fraction)
    report = data.report
    if not data.records:
        # An empty output would be a file `load_preferences` refuses; better to say so now.
        raise PrefalignError(
            f"{report.source}: all {report.read} records are bad, nothing to write; first: {report.rejections[0]}"
        )
    reshape = {"explicit": to_explicit, "conversational": to_conversational}.get(options.to)
    records = data.records if reshape is None else (reshape(record) for record in data.records)
    written = save_preferences(records, options.output)
    print(f"wrote {written} records to {options.output}; rejected {report.rejected} of {report.read} read")
    for line in format_rejections(summarize_rejections(report, first_locations=3), report.source):
        print(line)
    return 0

"""`prefalign prompts builtin`: write the built-in instruction-following prompt set."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from ..config import add_config_args, build_config
from ..preflight import check_output_file


@dataclass
class BuiltinPromptsOptions:
    """`prefalign prompts builtin`'s options."""

    output: str = field(metadata={"help": "the .jsonl file to write", "flags": ("-o",)})
    seed: int = field(default=0, metadata={"help": "picks tasks, instructions and arguments"})
    split: Literal["train", "heldout", "all"] = field(default="all", metadata={"help": "which prompts to write"})


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prompts", help="prompt sets for building pairs and evaluating")
    commands = parser.add_subparsers(dest="prompts_command", metavar="ACTION", required=True)
    builtin = commands.add_parser(
        "builtin",
        help="write the built-in instruction-following prompts",
        description="Write the built-in prompts as JSON Lines: everyday topics x verifiable instructions (IFEval "
        "style, one to three per prompt), with disjoint train and held-out topics. Each line has id, split, topic, "
        "prompt, instruction_id_list and kwargs, ready for `pairs build --judge verifier`. The same seed always "
        "gives the same file.",
    )
    add_config_args(builtin, BuiltinPromptsOptions, require=True, from_file=False)
    builtin.set_defaults(func=run_builtin)


def run_builtin(args: argparse.Namespace) -> int:
    from ..prompts import builtin_prompts, write_prompts

    options = build_config(BuiltinPromptsOptions, overrides=vars(args))
    check_output_file(options.output, create_parent=False)
    records = builtin_prompts(options.seed, options.split)
    written = write_prompts(records, options.output)
    by_split = Counter(record["split"] for record in records)
    counts = ", ".join(f"{count} {split}" for split, count in by_split.items())
    print(f"wrote {written} prompts ({counts}) to {options.output}")
    return 0

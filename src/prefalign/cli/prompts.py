"""`prefalign prompts builtin`: write the built-in instruction-following prompt set."""

from __future__ import annotations

import argparse
from collections import Counter


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
    builtin.add_argument("-o", "--output", required=True, help="the .jsonl file to write")
    builtin.add_argument("--seed", type=int, default=0, help="picks tasks, instructions and arguments (default: 0)")
    builtin.add_argument(
        "--split", choices=("train", "heldout", "all"), default="all", help="which prompts to write (default: all)"
    )
    builtin.set_defaults(func=run_builtin)


def run_builtin(args: argparse.Namespace) -> int:
    from ..prompts import builtin_prompts, write_prompts

    records = builtin_prompts(args.seed, args.split)
    written = write_prompts(records, args.output)
    by_split = Counter(record["split"] for record in records)
    counts = ", ".join(f"{count} {split}" for split, count in by_split.items())
    print(f"wrote {written} prompts ({counts}) to {args.output}")
    return 0

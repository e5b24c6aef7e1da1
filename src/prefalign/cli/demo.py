"""`prefalign demo`: the whole workflow on the embedded defaults, offline, as resumable stages."""

from __future__ import annotations

import argparse
import sys

from ..config import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..pipeline import STAGES, DemoConfig

    parser = subparsers.add_parser(
        "demo",
        help="run the end-to-end demo (offline, on the embedded model)",
        description="Run the end-to-end job as stages (" + ", ".join(STAGES) + "). Each stage writes its own "
        "directory and is skipped when its settings and inputs are unchanged; a killed run picks up where it stopped.",
    )
    parser.add_argument("--config", help="YAML file of options (command-line options override it)")
    parser.add_argument("--from", dest="from_stage", choices=STAGES, help="rerun from this stage on")
    add_config_args(parser, DemoConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import DemoConfig, run_demo

    config = config_from_args(DemoConfig, args)
    results = run_demo(config, args.from_stage)
    print("\nstage      time", file=sys.stderr)
    for result in results:
        state = "skipped" if result.skipped else f"{result.seconds:7.1f} s"
        print(f"{result.name:<10} {state}", file=sys.stderr)
    print(f"\nreport: {results[-1].directory / 'report.md'}")
    return 0

"""`prefalign demo`: the whole workflow on the embedded defaults, offline, as resumable stages."""

from __future__ import annotations

import argparse

from ..config import add_config_args, build_config
from ..console import say


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..pipeline import STAGES, DemoConfig

    parser = subparsers.add_parser(
        "demo",
        help="run the whole workflow: base -> SFT -> pairs -> reward model -> DPO -> three-way report",
        description="Run the alignment workflow as stages (" + ", ".join(STAGES) + "; with --rounds K, pairs_R and "
        "dpo_R for each later DPO round R before eval) on the embedded model, offline. Each stage writes its own "
        "directory and is skipped when its settings and inputs are unchanged; a killed run picks up where it stopped. "
        "--config FILE.yaml runs it on your model, data and judges.",
    )
    parser.add_argument("--config", help="YAML file of options (command-line options override it)")
    parser.add_argument(
        "--from",
        dest="from_stage",
        metavar="STAGE",
        help="rerun from this stage on: " + ", ".join(STAGES) + ", or pairs_R / dpo_R of a later round",
    )
    add_config_args(parser, DemoConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import QUICK, DemoConfig, run_demo

    config = build_config(DemoConfig, args.config, vars(args))
    if config.quick:  # the quick profile sits under the YAML file and the command line: what you set still wins
        config = build_config(DemoConfig, args.config, vars(args), preset=QUICK)
    results = run_demo(config, args.from_stage)
    say("\nstage       seconds", prefix="")
    for result in results:
        state = "skipped" if result.skipped else f"{result.seconds:7.1f}"
        say(f"{result.name:<10} {state:>8}", prefix="")
    say(f"{'total':<10} {sum(r.seconds for r in results):8.1f}", prefix="")
    print(f"\nreport: {results[-1].directory.parent / 'report.md'} (and report.html)")
    return 0

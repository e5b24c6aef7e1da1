"""`prefalign dpo` and `prefalign sft`: train a policy; the same options from the command line or a `--config` YAML."""

from __future__ import annotations

import argparse

from ..config import add_config_args, config_from_args
from ..train.config import DPOConfig, SFTConfig

_OUTPUTS = (
    "Writes OUTPUT_DIR/metrics.jsonl, plots/*.png, summary.json, run.json, checkpoints/step-N/ and the final model in "
    "final/. Runs under `torchrun --nproc-per-node N` as is."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    dpo = subparsers.add_parser(
        "dpo",
        help="train a policy on preferences: DPO, or SimPO, ORPO, KTO, APO, ... (--loss)",
        description="Train --model on the preference pairs of --data (DPO, Rafailov et al. 2023, against a frozen "
        "reference), or with another preference method or a weighted mixture of them (--loss; the README's "
        "Preference methods table gives each one's formula and paper). simpo and orpo need no reference model; kto "
        'also reads unpaired data, {"prompt", "completion", "label": true|false}. ' + _OUTPUTS,
    )
    _add_options(dpo, DPOConfig)
    dpo.set_defaults(func=run_dpo)

    sft = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on responses",
        description="Train --model on prompt/response, chat or preference (chosen) data; the loss covers the "
        "response tokens only. " + _OUTPUTS,
    )
    _add_options(sft, SFTConfig)
    sft.set_defaults(func=run_sft)


def _add_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    parser.add_argument("--config", help="YAML file of options (keys as the long options); the command line wins")
    add_config_args(parser, config_class)


def run_dpo(args: argparse.Namespace) -> int:
    from ..train.loop import train  # imports torch: only when a run starts, so `--help` stays fast
    from ..train.objectives import DPOObjective
    from ..train.run_files import check_run

    config = config_from_args(DPOConfig, args)
    check_run(config)
    train(config, DPOObjective(config))
    return 0


def run_sft(args: argparse.Namespace) -> int:
    from ..train.loop import train  # imports torch: only when a run starts, so `--help` stays fast
    from ..train.objectives import SFTObjective
    from ..train.run_files import check_run

    config = config_from_args(SFTConfig, args)
    check_run(config)
    train(config, SFTObjective(config))
    return 0

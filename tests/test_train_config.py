"""Training configs and the `dpo` / `sft` commands: defaults, YAML < command line, one-line errors, a CLI run."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from prefalign.cli.train import register
from prefalign.config import config_from_args
from prefalign.errors import PrefalignError
from prefalign.train.config import DPOConfig, SFTConfig
from test_train_support import (
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)

REQUIRED = {"model": "m", "data": "d.jsonl", "output_dir": "o"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prefalign")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_defaults_and_learning_rate_by_objective_and_lora() -> None:
    config = DPOConfig(**REQUIRED)
    assert (config.beta, config.loss, config.epochs) == (0.1, "sigmoid", 1)
    assert config.lora_target_modules == ["all-linear"]
    assert config.peak_learning_rate == 5e-6 and DPOConfig(**REQUIRED, lora=True).peak_learning_rate == 5e-5
    assert SFTConfig(**REQUIRED).peak_learning_rate == 2e-5
    assert DPOConfig(**REQUIRED, lora=True, learning_rate=1e-3).peak_learning_rate == 1e-3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": None}, "missing --model"),
        ({"eval_split": 0.1, "eval_data": "e.jsonl"}, "not both"),
        ({"merge": True}, "add --lora"),
        ({"loss": "hinge", "label_smoothing": 0.1}, "no effect with loss 'hinge'"),
        ({"loss": "dpo"}, "unknown term 'dpo'; choose from sigmoid, cdpo"),
        ({"loss": "sigmoid:x"}, "the weight of sigmoid is 'x', not a number"),
        ({"loss": "sigmoid:0"}, "the weight of sigmoid must be a number > 0"),
        ({"loss": "sigmoid,sigmoid:2"}, "sigmoid appears twice"),
        ({"loss": "kto,sft"}, "kto trains on single labelled completions"),
        ({"loss": "simpo,sft", "precompute_ref": True}, "uses no reference model: drop --precompute-ref"),
        ({"loss": "orpo", "ref_model": "other"}, "uses no reference model: drop --ref-model"),
        ({"simpo_gamma": -1.0}, "--simpo-gamma must be 0 or more"),
        ({"beta": 0.0}, "beta must be"),
        ({"lora": True, "ref_model": "other"}, "drop --ref-model"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"eval_split": 1.0}, "--eval-split"),
        ({"precision": "fp16"}, "--precision must be one of auto, bf16, fp32"),
        ({"trim_heap_every_layers": -1}, "--trim-heap-every-layers must be 0 or more"),
        ({"eval_steps": 0}, "--eval-steps must be a whole number of steps or a fraction in"),
        ({"eval_steps": 2.5}, "--eval-steps must be a whole number of steps or a fraction in"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(PrefalignError, match=message) as error:
        DPOConfig(**{**REQUIRED, **options})
    assert "\n" not in str(error.value)


def test_yaml_file_then_command_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: tiny\ndata: pairs.jsonl\noutput-dir: out\nbeta: 0.3\nlora: true\n"
        "lora_target_modules: [q_proj, v_proj]\n"
    )
    args = parse(["dpo", "--config", str(path), "--beta", "0.05", "--loss", "ipo,sft:0.5", "--no-lora"])
    config = config_from_args(DPOConfig, args)
    assert (config.model, config.beta, config.loss, config.lora) == ("tiny", 0.05, "ipo,sft:0.5", False)
    assert config.loss_terms == {"ipo": 1.0, "sft": 0.5} and not config.reference_free
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    sft = config_from_args(SFTConfig, parse(["sft", "--model", "m", "--data", "d", "--output-dir", "o"]))
    assert sft.objective_name == "sft" and not hasattr(sft, "beta")


def test_dpo_command_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 4)
    args = parse(
        [
            "dpo",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--output-dir",
            str(tmp_path / "out"),
            "--max-steps",
            "1",
            "--no-progress",
            "--no-plots",
            "--report-to",
            "none",
        ]
    )
    assert args.func(args) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and abs(record["loss"] - math.log(2)) < 1e-6


def test_eval_steps_below_one_is_a_fraction_of_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert [DPOConfig(**REQUIRED, eval_steps=n).eval_interval(66) for n in (0.5, 0.25, 0.001, 50)] == [33, 17, 1, 50]
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    inputs = ["--model", str(tiny_model_dir), "--data", str(data), "--eval-split", "0.25", "--batch-size", "1"]
    quiet = ["--no-progress", "--no-plots", "--report-to", "none", "--save-steps", "0"]
    args = parse(
        ["dpo", *inputs, *quiet, "--output-dir", str(tmp_path / "out"), "--max-steps", "6", "--eval-steps", "0.5"]
    )
    assert args.func(args) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval"] == [0, 3, 6]  # before, halfway, after

"""Dataclass configs: defaults < YAML < command line, and one-line errors for bad files or values."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from prefalign.config import add_config_args, build_config, config_from_args
from prefalign.errors import PrefalignError


@dataclass
class DemoConfig:
    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    epochs: int = 1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    lora: bool = False
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    eval_data: str | None = None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_args(parser, DemoConfig)
    return parser.parse_args(argv)


def test_defaults_when_nothing_given() -> None:
    assert config_from_args(DemoConfig, parse([])) == DemoConfig()


def test_yaml_then_command_line_override(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("learning-rate: 0.001\nepochs: 3\nlora: true\ntarget_modules: [q_proj, k_proj]\n")
    config = config_from_args(DemoConfig, parse(["--config", str(path), "--epochs", "5", "--no-lora"]))
    assert config.learning_rate == pytest.approx(0.001)
    assert config.epochs == 5  # command line beats the file
    assert config.lora is False
    assert config.target_modules == ["q_proj", "k_proj"]


def test_command_line_list_and_choice() -> None:
    config = config_from_args(DemoConfig, parse(["--target-modules", "o_proj", "--loss-type", "ipo"]))
    assert config.target_modules == ["o_proj"]
    assert config.loss_type == "ipo"
    with pytest.raises(SystemExit):
        parse(["--loss-type", "nonsense"])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(PrefalignError, match=r"run\.yaml: unknown option 'learning_rat'"):
        build_config(DemoConfig, path)


def test_bad_value_in_yaml(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: many\n")
    with pytest.raises(PrefalignError, match=r"run\.yaml: option 'epochs'"):
        build_config(DemoConfig, path)
    path.write_text("loss_type: dpo\n")
    with pytest.raises(PrefalignError, match="must be one of sigmoid, ipo"):
        build_config(DemoConfig, path)


def test_broken_yaml_names_the_line(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 1\nlora: [true\n")
    with pytest.raises(PrefalignError, match=r"run\.yaml:\d+: not valid YAML"):
        build_config(DemoConfig, path)


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(PrefalignError, match="config file not found"):
        build_config(DemoConfig, tmp_path / "absent.yaml")

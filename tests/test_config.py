"""Dataclass configs: defaults < YAML < command line, and one-line errors for bad files or values."""

from __future__ import annotations

import argparse
import re
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


def test_a_directory_or_binary_file_as_config_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(PrefalignError, match="--config is a directory"):
        build_config(DemoConfig, tmp_path)
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x80\x81\xfe")
    with pytest.raises(PrefalignError, match="weights.yaml: not UTF-8 text at byte offset 0"):
        build_config(DemoConfig, binary)


@dataclass
class Options:
    """Options shared by several commands: one nested group."""

    timeout: float = field(default=60.0, metadata={"help": "seconds", "group": "requests"})


def _pair(text: str) -> tuple[str, str]:
    label, _, value = text.partition("=")
    return label, value


@dataclass
class Command:
    models: list[tuple[str, str]] = field(
        metadata={"help": "LABEL=SPEC", "option": "model", "repeat": True, "parse": _pair}
    )
    output: str = field(metadata={"help": "where", "flags": ("-o",)})
    runs: dict[str, str] = field(
        default_factory=dict, metadata={"help": "LABEL=DIR", "option": "run", "repeat": True, "parse": _pair}
    )
    options: Options = field(default_factory=Options)


def _command_parser(require: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_args(parser, Command, require=require)
    return parser


def test_repeated_parsed_options_a_short_flag_and_a_nested_group() -> None:
    argv = ["--model", "a=x", "--model", "b=y", "-o", "out", "--run", "a=r", "--timeout", "5"]
    config = config_from_args(Command, _command_parser(require=True).parse_args(argv))
    assert config.models == [("a", "x"), ("b", "y")]
    assert config.output == "out" and config.runs == {"a": "r"}
    assert config.options == Options(timeout=5.0)
    assert config_from_args(Command, _command_parser(require=True).parse_args(argv[:6])).options == Options()
    assert any(group.title == "requests" for group in _command_parser(require=True)._action_groups)


def test_required_fields(tmp_path) -> None:
    with pytest.raises(SystemExit):  # required on the command line...
        _command_parser(require=True).parse_args(["-o", "out"])
    args = _command_parser(require=False).parse_args(["-o", "out"])
    with pytest.raises(PrefalignError, match=r"missing --model \(or `models:` in the --config file\)"):
        config_from_args(Command, args)  # ...or named when a YAML file could have given them
    path = tmp_path / "run.yaml"
    path.write_text("models: [a=x]\noptions: {timeout: 2}\n")
    config = build_config(Command, path, vars(args))
    assert config.models == [("a", "x")] and config.options.timeout == 2.0


@dataclass
class FileCommand:
    """A command of positional arguments, alternatives and flags, none of them set by a --config file."""

    source: str = field(metadata={"help": "input", "metavar": "SOURCE", "positional": True})
    target: str | None = field(default=None, metadata={"help": "output", "metavar": "TARGET", "positional": True})
    prompts: str | None = field(default=None, metadata={"help": "a file", "one_of": "prompt source"})
    prompt: str | None = field(default=None, metadata={"help": "a prompt", "one_of": "prompt source"})
    json: bool = field(default=False, metadata={"help": "print JSON"})


def _file_command(argv: list[str]) -> FileCommand:
    parser = argparse.ArgumentParser()
    add_config_args(parser, FileCommand, require=True, from_file=False)
    return build_config(FileCommand, overrides=vars(parser.parse_args(argv)))


def test_positional_arguments_required_without_a_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert _file_command(["in", "--prompt", "p"]) == FileCommand(source="in", prompt="p")
    assert _file_command(["in", "out", "--prompt", "p"]).target == "out"
    with pytest.raises(SystemExit):
        _file_command(["--prompt", "p"])
    assert "the following arguments are required: SOURCE" in capsys.readouterr().err


def test_one_of_takes_exactly_one_alternative(capsys: pytest.CaptureFixture[str]) -> None:
    assert _file_command(["in", "--prompts", "f"]).prompts == "f"
    with pytest.raises(SystemExit):
        _file_command(["in"])
    assert "one of the arguments --prompts --prompt is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _file_command(["in", "--prompts", "f", "--prompt", "p"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_bool_no_file_sets_is_a_plain_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert _file_command(["in", "--prompt", "p", "--json"]).json is True
    assert _file_command(["in", "--prompt", "p"]).json is False
    with pytest.raises(SystemExit):
        _file_command(["in", "--prompt", "p", "--no-json"])
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    add_config_args(parser, FileCommand, require=True, from_file=False)
    assert re.search(r"^  --json +print JSON$", parser.format_help(), re.MULTILINE)
    # Where a --config file may set it, a bool can be switched off again.
    parser = argparse.ArgumentParser()
    add_config_args(parser, DemoConfig)
    assert re.search(r"^  --lora, --no-lora +\(default: False\)$", parser.format_help(), re.MULTILINE)

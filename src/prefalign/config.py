"""Configs are dataclasses: loadable from YAML, overridable on the command line.

Each config field becomes a `--kebab-case` option whose help text comes from the field's `metadata["help"]`. Options the
user did not type are absent from the parsed namespace (their default is `argparse.SUPPRESS`), so the precedence is
simply: dataclass default < YAML file (`--config`) < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import PrefalignError

T = TypeVar("T")


def _option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of the dataclass `cls` (fields named in `skip` are left to the caller)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        tp, _ = _unwrap_optional(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field.metadata.get("help", "")
        if default not in (None, "", [], ()):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": field.name}
        origin = typing.get_origin(tp)
        if tp is bool:
            # --flag / --no-flag, so a YAML `true` can be switched off on the command line.
            parser.add_argument(_option_name(field.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = type(kwargs["choices"][0])
        elif origin in (list, tuple):
            (item,) = typing.get_args(tp)[:1]
            kwargs["type"] = item
            kwargs["nargs"] = "+"
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        parser.add_argument(_option_name(field.name), **kwargs)


def _coerce(value: Any, tp: Any, name: str, origin_label: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise PrefalignError(f"{origin_label}: option '{name}' may not be empty")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(map(str, choices))}")
            return value
        if origin in (list, tuple):
            (item,) = typing.get_args(tp)[:1]
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
            return [item(v) for v in items]
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, bool):
            raise ValueError("expected an integer")
        if tp in (int, float, str):
            return tp(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise PrefalignError(f"{origin_label}: option '{name}': {exc}") from None
    return value


def build_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset: dict[str, Any] | None = None,
) -> T:
    """Defaults of `cls`, then `preset` (e.g. a `--quick` profile), then the YAML file's values, then `overrides` (the
    options typed on the command line)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = dict(preset or {})
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise PrefalignError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise PrefalignError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(loaded, dict):
            raise PrefalignError(f"{path}: a config file must be a mapping of option: value")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise PrefalignError(f"{path}: unknown option '{key}' (known: {', '.join(sorted(names))})")
            values[name] = _coerce(value, hints[name], name, str(path))
    for name, value in (overrides or {}).items():
        if name in names:
            values[name] = _coerce(value, hints[name], name, "command line")
    try:
        return cls(**values)
    except TypeError as exc:
        raise PrefalignError(f"incomplete config: {exc}") from None


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build `cls` from a namespace made by a parser that got `add_config_args(parser, cls)` and a `--config` option."""
    return build_config(cls, getattr(args, "config", None), vars(args))


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)

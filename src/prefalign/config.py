"""Configs are dataclasses: loadable from YAML, overridable on the command line.

Each config field becomes a `--kebab-case` option. Options the user did not type are absent from the parsed namespace
(their default is `argparse.SUPPRESS`), so the precedence is simply: dataclass default < YAML file (`--config`) <
command line. A field without a default is a required option. A field's `metadata` shapes its option:

  help     what the option does (shown by --help, followed by the default)
  metavar  the value's placeholder in --help
  option   the option's name when it differs from the field's (a list field `models` given as `--model`)
  flags    more option strings, e.g. ("-o",)
  repeat   a list option given once per item (`--model a=x --model b=y`) rather than as several values
  parse    turns one item as typed (a string) into the field's value or list item, e.g. "LABEL=SPEC" -> (label, spec)
  group    the --help section the option is listed in
  positional  the field is a positional argument (its metavar, e.g. SOURCE, names it; required without a default)
  one_of   fields sharing this name are alternatives: the command line takes exactly one of them (each needs a
           default, e.g. `--prompts FILE` or `--prompt TEXT`)

A field whose type is itself a config dataclass is an option group declared once and shared by every command that
includes it: its fields are options of the command, and the nested config is built from them (so the field holding it
needs a name no option has).

A bool field is `--flag / --no-flag`, so a YAML `true` can be switched off on the command line; options no `--config`
file sets (`add_config_args(..., from_file=False)`) have no file to undo, and a bool of theirs that defaults to false
is a plain `--flag`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import PrefalignError

T = TypeVar("T")


def _option_name(field: dataclasses.Field) -> str:
    return "--" + field.metadata.get("option", field.name).replace("_", "-")


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


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _item_parser(field: dataclasses.Field, tp: Any) -> Callable[[str], Any]:
    """What turns one typed item into a value: the field's `parse`, else its (item) type."""
    parse = field.metadata.get("parse")
    if parse is not None:
        return parse
    if typing.get_origin(tp) in (list, tuple):
        return typing.get_args(tp)[0]
    return tp if tp in (int, float, str, Path) else str


def _add_option(parser: Any, field: dataclasses.Field, tp: Any, require: bool, from_file: bool) -> None:
    metadata = field.metadata
    default = field.default if field.default is not dataclasses.MISSING else None
    plain_flag = tp is bool and not from_file and default is False
    help_text = metadata.get("help", "")
    if default not in (None, "", [], ()) and not plain_flag:
        help_text += f" (default: {default})"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
    if "metavar" in metadata:
        kwargs["metavar"] = metadata["metavar"]
    if metadata.get("positional"):
        names = [field.name]  # argparse names a positional's destination after it
        if not _is_required(field):
            kwargs["nargs"] = "?"
    else:
        names = [*metadata.get("flags", ()), _option_name(field)]
        kwargs["dest"] = field.name
        if require and _is_required(field):
            kwargs["required"] = True
    origin = typing.get_origin(tp)
    if plain_flag:
        parser.add_argument(*names, action="store_true", **kwargs)
        return
    if tp is bool:
        parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if origin is typing.Literal:
        kwargs["choices"] = list(typing.get_args(tp))
        kwargs["type"] = type(kwargs["choices"][0])
    else:
        kwargs["type"] = _item_parser(field, tp)
        if origin in (list, tuple, dict):
            if metadata.get("repeat"):
                kwargs["action"] = "append"
            else:
                kwargs["nargs"] = "+"
    parser.add_argument(*names, **kwargs)


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    *,
    require: bool = False,
    from_file: bool = True,
) -> None:
    """Add one option per field of the dataclass `cls` (fields named in `skip` are left to the caller), and the options
    of its nested config dataclasses; a field's `group` metadata puts it in that --help section. With `require`, a
    field without a default is a required option; leave it off where a `--config` file may supply the field (then
    `build_config` names what is missing). `from_file=False` says no `--config` file sets these options (their bools
    have no `--no-flag`)."""
    groups: dict[str, Any] = {}
    alternatives: dict[str, Any] = {}

    def add(target: Any, config_class: type) -> None:
        hints = typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            if field.name in skip or not field.init:
                continue
            where = target
            title = field.metadata.get("group")
            if title is not None:
                where = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
            one_of = field.metadata.get("one_of")
            if one_of is not None:
                if one_of not in alternatives:
                    alternatives[one_of] = where.add_mutually_exclusive_group(required=True)
                where = alternatives[one_of]
            tp, _ = _unwrap_optional(hints[field.name])
            if dataclasses.is_dataclass(tp):
                add(where, tp)
            else:
                _add_option(where, field, tp, require, from_file)

    add(parser, cls)


def _coerce(value: Any, tp: Any, field: dataclasses.Field, origin_label: str) -> Any:
    name = field.name
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise PrefalignError(f"{origin_label}: option '{name}' may not be empty")
    origin = typing.get_origin(tp)
    try:
        if dataclasses.is_dataclass(tp):
            if isinstance(value, dict):  # a YAML mapping of the nested config's options
                return tp(**_values_from_mapping(tp, value, origin_label))
            return value
        if tp is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(map(str, choices))}")
            return value
        if origin in (list, tuple, dict):
            if isinstance(value, dict):
                return dict(value)
            parse, custom = _item_parser(field, tp), "parse" in field.metadata
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
            # A custom parser reads what was typed; an item it already parsed (a command-line value) stays as is.
            parsed = [parse(v) if not custom or isinstance(v, str) else v for v in items]
            return dict(parsed) if origin is dict else parsed
        parse = field.metadata.get("parse")
        if parse is not None:
            return parse(value) if isinstance(value, str) else value
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, bool):
            raise ValueError("expected an integer")
        if tp in (int, float, str, Path):
            return tp(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise PrefalignError(f"{origin_label}: option '{name}': {exc}") from None
    return value


def _values_from_mapping(cls: type, mapping: dict[Any, Any], origin_label: str) -> dict[str, Any]:
    """A YAML mapping's values for `cls`, coerced to the fields' types; an unknown key is an error naming it."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in mapping.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise PrefalignError(f"{origin_label}: unknown option '{key}' (known: {', '.join(sorted(fields))})")
        values[name] = _coerce(value, hints[name], fields[name], origin_label)
    return values


def _load_yaml(path: Path) -> dict[Any, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PrefalignError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise PrefalignError(f"{path}: --config is a directory; give a YAML file") from None
    except UnicodeDecodeError as exc:
        raise PrefalignError(f"{path}: not UTF-8 text at byte offset {exc.start}; a config file is YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise PrefalignError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(loaded, dict):
        raise PrefalignError(f"{path}: a config file must be a mapping of option: value")
    return loaded


def build_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset: dict[str, Any] | None = None,
) -> T:
    """Defaults of `cls`, then `preset` (e.g. a `--quick` profile), then the YAML file's values, then `overrides` (the
    options typed on the command line). A nested config dataclass not given as a whole is built from `overrides`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = dict(preset or {})
    if yaml_path is not None:
        values.update(_values_from_mapping(cls, _load_yaml(Path(yaml_path)), str(yaml_path)))
    for name, value in (overrides or {}).items():
        if name in fields:
            values[name] = _coerce(value, hints[name], fields[name], "command line")
    for name in fields:
        nested, _ = _unwrap_optional(hints[name])
        if name not in values and dataclasses.is_dataclass(nested):
            values[name] = build_config(nested, overrides=overrides)
    for name, field in fields.items():
        if name not in values and _is_required(field):
            key = name.replace("_", "-")
            raise PrefalignError(f"missing {_option_name(field)} (or `{key}:` in the --config file)")
    try:
        return cls(**values)
    except TypeError as exc:
        raise PrefalignError(f"incomplete config: {exc}") from None


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build `cls` from a namespace made by a parser that got `add_config_args(parser, cls)` and a `--config` option."""
    return build_config(cls, getattr(args, "config", None), vars(args))

"""Command-line flags made from the settings fields, so each option's one-line text, its
default and its ``ATCDN_*`` variable have one home (core/settings.py).

A flag given on the command line is written to its variable (``export``) and the
settings are then read from the environment, in this process and in every server worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing

from atcdn.core.sizes import format_size, parse_size
from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

Model = type[BaseSettings]
EXPORTS = "_setting_flags"  # the parser default listing (model, field, dest) per command


def env_name(model: Model, name: str) -> str:
    """The environment variable of ``model.name``."""
    field = model.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def is_size(field: FieldInfo) -> bool:
    return any(getattr(meta, "func", None) is parse_size for meta in field.metadata)


def show_default(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if is_size(field):
        return format_size(value)
    return str(value)


def plain(text: str, default: object = None, *, required: bool = False) -> str:
    """Help for a flag that is not a setting: text, default, and no variable."""
    if required:
        return f"{text} (required; no environment variable)"
    shown = "unset" if default is None else (repr(default) if default == "" else default)
    return f"{text} (default: {shown}; no environment variable)".replace("%", "%%")


def help_text(model: Model, name: str) -> str:
    field = model.model_fields[name]
    text = field.description or name.replace("_", " ")
    if is_size(field):
        text += "; accepts 10G, 512M, 1.5GiB"
    help_ = f"{text} (default: {show_default(field)}; env {env_name(model, name)})"
    return help_.replace("%", "%%")


def add_setting(parser: argparse.ArgumentParser, model: Model, name: str,
                flag: str | None = None, *, repeat: bool = False) -> None:
    """Add ``--name`` for ``model.name`` with generated help; None unless given.
    ``repeat``: the flag may be given more than once; the values are joined with commas."""
    field = model.model_fields[name]
    flag = flag or "--" + name.replace("_", "-")
    dest = flag.lstrip("-").replace("-", "_")
    kwargs: dict[str, typing.Any] = {"dest": dest, "default": None,
                                     "help": help_text(model, name)}
    if repeat:
        kwargs["action"] = "append"
    if field.annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["metavar"] = name.upper() if not is_size(field) else "SIZE"
        if typing.get_origin(field.annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(field.annotation)
            kwargs.pop("metavar")
    parser.add_argument(flag, **kwargs)
    exports = parser.get_default(EXPORTS) or []
    parser.set_defaults(**{EXPORTS: [*exports, (model, name, dest)]})


def export(args: argparse.Namespace) -> None:
    """Write every setting flag given on the command line to its variable."""
    for model, name, dest in getattr(args, EXPORTS, None) or []:
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, list):
            value = ",".join(value)
        os.environ[env_name(model, name)] = str(value)


def load(model: Model, command: str) -> typing.Any:
    """The settings from the environment; on a bad value, one line each and exit 2."""
    try:
        return model()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            if name in model.model_fields:
                where = f"{env_name(model, name)} (--{name.replace('_', '-')})"
            else:
                where = name
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{command}: {where}: {message}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None

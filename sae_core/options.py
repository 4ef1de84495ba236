"""Options as dataclasses: one dataclass per command is its CLI flags, its config-file schema and its defaults.

A field declared with `option(default, help)` becomes `--field-name`; `add_config_arguments` adds them all
(plus `--config FILE`), and `config_from_args` builds the dataclass from defaults, the file, then the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

_SUFFIXES = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_count(text: str | int) -> int:
    """Parse a token count such as `2M`, `500k`, `65536` or `1.5M` into an int."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMbB]?)\s*", str(text))
    if not match:
        raise UserError(f"cannot read {text!r} as a count; write e.g. 2M, 500k or 65536")
    number, suffix = match.groups()
    return int(float(number) * _SUFFIXES.get(suffix.lower(), 1))


def option(default: Any, help: str, *, count: bool = False, flag: str | None = None, auto: bool = False) -> Any:
    """A dataclass field carrying its CLI help (and whether it accepts 2M-style counts, or `auto`, stored as 0)."""
    meta = {"help": help, "count": count, "flag": flag, "auto": auto}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one CLI flag per config field (defaults stay None so a config file can fill them)."""
    parser.add_argument("--config", help="YAML or JSON file with any of the options below (flags override it)")
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata["help"] if "(default:" in f.metadata["help"] else f"{f.metadata['help']} (default: {default})"
        if f.type in ("bool", bool):
            parser.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.type in ("list", list):
            parser.add_argument(_flag(f), dest=f.name, type=float, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(_flag(f), dest=f.name, type=str, default=None, metavar=f.name.upper(), help=help_text)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Turn a CLI string or config-file value into the field's type, with a clear error."""
    if value is None:
        return None
    kind = str(f.type)
    try:
        if f.metadata.get("auto") and str(value).lower() == "auto":
            return 0
        if f.metadata.get("count"):
            return parse_count(value)
        if "bool" in kind:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
        if "list" in kind:
            return list(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"option {f.name}: cannot read {value!r} ({exc})") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (keys may use - or _)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """Build a config: defaults, then the --config file, then explicit flags."""
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        file_values = load_config_file(args.config)
        unknown = sorted(set(file_values) - set(known))
        if unknown:
            raise UserError(f"config file {args.config} has unknown options: {', '.join(unknown)}")
        values.update(file_values)
    for name in known:
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
    return cls(**{name: _coerce(known[name], v) for name, v in values.items()})

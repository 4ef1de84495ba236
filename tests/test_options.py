"""One option mechanism for every command: each command's flags come from dataclasses, and a --config file
sets any of them (flags win); every command that takes options reads one."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from sae_core.cli import build_parser
from sae_core.errors import UserError
from sae_core.features.precompute import PrecomputeOptions
from sae_core.options import _CLASSES, _default, add_config_arguments, config_from_args
from sae_core.refusal.study import StudyConfig
from sae_core.training import TrainConfig


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every leaf subcommand: (its words, its parser)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, child in subs[0].choices.items():
        yield from _commands(child, (*prefix, name))


COMMANDS = list(_commands(build_parser()))
WITH_OPTIONS = [(words, parser) for words, parser in COMMANDS if _CLASSES in parser._defaults]


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [f"x{i}" for i, a in enumerate(parser._actions) if not a.option_strings and a.nargs != 0
            and not isinstance(a, argparse._SubParsersAction)]


def _other_value(f: dataclasses.Field):
    """A valid value different from the field's default, as a config file would hold it."""
    default, kind, choices = _default(f), str(f.type), f.metadata["choices"]
    if choices:
        return next(c for c in choices if c != default)
    if "bool" in kind:
        return not default
    if kind.startswith("list"):
        return [0.5, 0.25] if "float" in kind or (default and isinstance(default[0], float)) else ["L1R", "L2R"]
    if "int" in kind:
        return (default or 0) + 7
    if "float" in kind:
        return 0.5 if default != 0.5 else 0.25
    return "somewhere"


def test_every_command_with_options_takes_a_config_file():
    without = [" ".join(words) for words, p in COMMANDS
               if any(a.option_strings and a.dest != "help" for a in p._actions) and _CLASSES not in p._defaults]
    assert not without, f"commands whose flags are written by hand instead of from option dataclasses: {without}"
    with_options = {" ".join(words) for words, _ in WITH_OPTIONS}
    assert {"train", "eval", "precompute", "import", "cache", "explain", "embed", "app", "sites", "report",
            "refusal study", "refusal find", "refusal steer"} <= with_options


@pytest.mark.parametrize("words, parser", WITH_OPTIONS, ids=[" ".join(w) for w, _ in WITH_OPTIONS])
def test_a_config_file_sets_every_option_and_flags_win(words, parser, tmp_path):
    classes, skip = parser._defaults[_CLASSES]
    options = [f for cls in classes for f in dataclasses.fields(cls) if f.name not in skip]
    values = {f.name: _other_value(f) for f in options}
    path = tmp_path / "options.json"
    path.write_text(json.dumps(values))
    args = build_parser().parse_args([*words, *_positionals(parser), "--config", str(path)])
    for cls in classes:
        built = config_from_args(args, cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                assert getattr(built, f.name) == values[f.name], f"{' '.join(words)}: option {f.name}"
    first = options[0]
    flag = f"--{first.name.replace('_', '-')}" if not first.metadata["flag"] else first.metadata["flag"]
    if "bool" not in str(first.type):
        args = build_parser().parse_args([*words, *_positionals(parser), "--config", str(path), flag, str(_default(first) or 3)])
        owner = next(cls for cls in classes if first.name in {f.name for f in dataclasses.fields(cls)})
        assert getattr(config_from_args(args, owner), first.name) != values[first.name]


def _parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return config_from_args(parser.parse_args(argv), cls)


def test_a_config_file_may_use_the_flag_name_and_counts(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("top: 7\nintervals: 2\ntokens: 64k\nsplit: train\n")
    options = _parse(PrecomputeOptions, ["--config", str(path)])
    assert (options.n_top, options.n_intervals, options.tokens, options.split) == (7, 2, 64_000, "train")
    assert _parse(PrecomputeOptions, ["--config", str(path), "--top", "3"]).n_top == 3


def test_lists_read_commas_or_separate_values():
    assert _parse(StudyConfig, ["--alphas", "0.1,0.2", "--sites", "L1R", "L2R"]).alphas == [0.1, 0.2]
    assert _parse(StudyConfig, ["--alphas", "0.1", "0.3"]).alphas == [0.1, 0.3]
    assert _parse(StudyConfig, ["--sites", "L1R,L2R"]).sites == ["L1R", "L2R"]
    assert _parse(StudyConfig, []).alphas == [0.05, 0.1, 0.2, 0.4] and _parse(StudyConfig, []).sites is None


def test_bad_values_name_the_option(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("split: sideways\n")
    with pytest.raises(UserError, match="option split: 'sideways' is not one of eval, train, all"):
        _parse(PrecomputeOptions, ["--config", str(path)])
    path.write_text("topp: 3\n")
    with pytest.raises(UserError, match="unknown options: topp"):
        _parse(PrecomputeOptions, ["--config", str(path)])


def test_required_options_name_their_flag(tmp_path):
    from sae_core.activations.cache import CacheOptions

    with pytest.raises(UserError, match="give --sites, --tokens, --out"):
        _parse(CacheOptions, [])
    path = tmp_path / "c.yaml"
    path.write_text("sites: L0R\ntokens: 2k\n")
    assert _parse(CacheOptions, ["--config", str(path), "--out", "x"]).tokens == 2_000


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sites: L3R,L3M\ntokens: 1M\nk: 64\nnormalize: false\n")
    cfg = _parse(TrainConfig, ["--config", str(path), "--k", "16", "--out", "runs/x"])
    assert cfg.sites == "L3R,L3M" and cfg.tokens == 1_000_000
    assert cfg.k == 16 and cfg.out == "runs/x"
    assert cfg.normalize is False
    assert cfg.arch == TrainConfig().arch


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        _parse(TrainConfig, ["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("sitez: L1R\n")
    with pytest.raises(UserError, match="unknown options: sitez"):
        _parse(TrainConfig, ["--config", str(bad)])
    bad.write_text("k: many\n")
    with pytest.raises(UserError, match="option k"):
        _parse(TrainConfig, ["--config", str(bad)])


def test_json_config_and_dash_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"batch-size": 1024, "lr": 0.001}')
    cfg = _parse(TrainConfig, ["--config", str(path)])
    assert cfg.batch_size == 1024 and cfg.lr == 0.001

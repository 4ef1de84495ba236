"""The training config: counts, config files, CLI flags and their precedence."""

from __future__ import annotations

import argparse

import pytest

from sae_core.errors import UserError
from sae_core.options import add_config_arguments, config_from_args, parse_count
from sae_core.training import TrainConfig
from sae_core.training.schedule import lr_factor


@pytest.mark.parametrize("text, value", [("2M", 2_000_000), ("500k", 500_000), ("65536", 65536), ("1.5M", 1_500_000), (7, 7)])
def test_parse_count(text, value):
    assert parse_count(text) == value


def test_parse_count_rejects_garbage():
    with pytest.raises(UserError, match="2M, 500k"):
        parse_count("lots")


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    return config_from_args(parser.parse_args(argv), TrainConfig)


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sites: L3R,L3M\ntokens: 1M\nk: 64\nnormalize: false\n")
    cfg = _parse(["--config", str(path), "--k", "16", "--out", "runs/x"])
    assert cfg.sites == "L3R,L3M" and cfg.tokens == 1_000_000
    assert cfg.k == 16 and cfg.out == "runs/x"
    assert cfg.normalize is False
    assert cfg.arch == TrainConfig().arch


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        _parse(["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("sitez: L1R\n")
    with pytest.raises(UserError, match="unknown options: sitez"):
        _parse(["--config", str(bad)])
    bad.write_text("k: many\n")
    with pytest.raises(UserError, match="option k"):
        _parse(["--config", str(bad)])


def test_json_config_and_dash_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"batch-size": 1024, "lr": 0.001}')
    cfg = _parse(["--config", str(path)])
    assert cfg.batch_size == 1024 and cfg.lr == 0.001


def test_default_learning_rate_follows_width_scaling():
    cfg = TrainConfig()
    assert cfg.resolved_lr(16384) == pytest.approx(2e-4)
    assert cfg.resolved_lr(4 * 16384) == pytest.approx(1e-4)


def test_lr_schedule_warms_up_holds_and_decays_to_zero():
    factors = [lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(f == 1.0 for f in factors[10:80])
    assert factors[80] == pytest.approx(1.0) and factors[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(factors[80:], factors[81:]))

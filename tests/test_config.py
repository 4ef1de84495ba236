"""The training config: counts and the learning-rate rule and schedule (its flags and file: tests/test_options.py)."""

from __future__ import annotations

import pytest

from sae_core.errors import UserError
from sae_core.options import parse_count
from sae_core.training import TrainConfig
from sae_core.training.schedule import lr_factor


@pytest.mark.parametrize("text, value", [("2M", 2_000_000), ("500k", 500_000), ("65536", 65536), ("1.5M", 1_500_000), (7, 7)])
def test_parse_count(text, value):
    assert parse_count(text) == value


def test_parse_count_rejects_garbage():
    with pytest.raises(UserError, match="2M, 500k"):
        parse_count("lots")


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

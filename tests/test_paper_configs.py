"""The paper's suites under configs/paper: each dry-runs against a tiny random Qwen3 with the real model's layer count."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_core.cli import main
from sae_core.options import load_config_file
from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer
from sae_core.training import TrainConfig
from sae_core.training.plan import plan_training

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"

SUITES = {
    # config: (Hub model, its layer count, SAEs, sites trained at)
    "qwen3-1.7b.yaml": ("Qwen/Qwen3-1.7B", 28, 84, {"resid_post", "mlp_out", "attn_out"}),
    "qwen3-4b.yaml": ("Qwen/Qwen3-4B", 36, 108, {"resid_post", "mlp_out", "attn_out"}),
    "qwen3-8b-residual.yaml": ("Qwen/Qwen3-8B", 36, 9, {"resid_post"}),
}


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    """A tiny random Qwen3 per layer count (hidden size 64), saved like a Hub checkpoint."""
    made = {}

    def build(n_layers: int) -> Path:
        if n_layers not in made:
            path = tmp_path_factory.mktemp(f"qwen3-{n_layers}-layers")
            model = tiny_model("qwen3", n_layers=n_layers, d_model=64)
            model.config.max_position_embeddings = 40_960  # Qwen3's, so the configs' context size fits
            model.save_pretrained(path)
            tiny_tokenizer().save_pretrained(path)
            made[n_layers] = path
        return made[n_layers]

    return build


def test_every_paper_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(SUITES)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_paper_config_dry_runs(name, tiny_qwen3, capsys):
    hub_model, n_layers, n_saes, kinds = SUITES[name]
    values = load_config_file(CONFIGS / name)
    assert values["model"] == hub_model
    cfg = _typed(CONFIGS / name, model=str(tiny_qwen3(n_layers)))
    plan = plan_training(cfg, ranks=8)
    assert plan.n_layers == n_layers and len(plan.sites) == n_saes
    assert {s.kind for s in plan.sites} == kinds
    assert plan.d_sae == values["d_sae"] and plan.saes_per_rank == -(-n_saes // 8)
    assert cfg.parallel == "sites" and cfg.lm_batch_size == 0 and cfg.tokens >= 500_000_000  # auto, 500M parsed
    # the same through the command line, as a user would check it
    assert main(["train", "--config", str(CONFIGS / name), "--model", str(tiny_qwen3(n_layers)), "--dry-run", "--ranks", "8"]) == 0
    out = capsys.readouterr().out
    assert f"{n_saes} (" in out and "8 rank(s), sites parallel" in out


def _typed(path: Path, **overrides) -> TrainConfig:
    """The config as `train --config` builds it (counts such as 500M and `auto` parsed)."""
    from sae_core.cli import build_parser
    from sae_core.options import config_from_args

    args = build_parser().parse_args(["train", "--config", str(path), *[a for k, v in overrides.items() for a in (f"--{k}", v)]])
    return config_from_args(args, TrainConfig)

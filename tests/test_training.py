"""End-to-end training on a tiny model: files, metrics, resume equivalence, run-folder safety."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sae_core.errors import RunError, UserError
from sae_core.loading import load_sae
from sae_core.training import TrainConfig, train


def _cfg(tiny_model_dir, tiny_corpus, out, **overrides) -> TrainConfig:
    values = dict(
        model=str(tiny_model_dir),
        corpus=str(tiny_corpus),
        sites="L0R,L1M,L1A",
        arch="topk",
        k=4,
        expansion=2,
        tokens=4096,
        batch_size=256,
        context_size=32,
        lm_batch_size=4,
        chunk_tokens=1024,
        checkpoint_every=1024,
        dead_tokens=1024,
        eval=False,
        eval_tokens=1024,
        ce_tokens=256,
        out=str(out),
        threads=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    out = {}
    for folder in sorted((run_dir / "saes").iterdir()):
        for name, tensor in load_file(folder / "sae_weights.safetensors").items():
            out[f"{folder.name}/{name}"] = tensor
    return out


def test_train_writes_saelens_folders_for_every_site(tiny_model_dir, tiny_corpus, tmp_path):
    run = train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / "run"), log=lambda _: None)
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "complete"
    assert info["sites"] == ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"]
    folders = {p.name for p in run.sae_dirs()}
    assert folders == set(info["sites"])
    for folder in run.sae_dirs():
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg["architecture"] == "topk" and cfg["k"] == 4
        assert cfg["d_in"] == 64 and cfg["d_sae"] == 128
        assert cfg["metadata"]["hook_name"] == folder.name
        assert cfg["metadata"]["training_tokens"] == 4096
        sae = load_sae(folder)
        # decoder rows are unit-norm in the saved, inference-ready form
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128), atol=1e-4, rtol=0)
    assert not run.checkpoint_path.exists()
    log_lines = run.log_path.read_text().splitlines()
    assert log_lines and "fvu" in json.loads(log_lines[-1])


def test_training_reduces_reconstruction_error(tiny_model_dir, tiny_corpus, tmp_path):
    run = train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / "run", sites="L1R", tokens=16384), log=lambda _: None)
    records = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    assert records[-1]["fvu"] < records[0]["fvu"] * 0.8
    assert records[-1]["fvu"] < 0.5


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "standard"])
def test_every_architecture_trains_and_saves(arch, tiny_model_dir, tiny_corpus, tmp_path):
    run = train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / arch, sites="L1R", arch=arch, tokens=2048), log=lambda _: None)
    (folder,) = run.sae_dirs()
    saved_arch = json.loads((folder / "cfg.json").read_text())["architecture"]
    assert saved_arch == ("jumprelu" if arch == "batchtopk" else arch)
    sae = load_sae(folder)
    x = torch.randn(8, 64)
    assert sae(x).shape == (8, 64)


def test_resumed_run_ends_with_identical_weights(tiny_model_dir, tiny_corpus, tmp_path):
    straight = train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / "a"), log=lambda _: None)

    cfg = _cfg(tiny_model_dir, tiny_corpus, tmp_path / "b")
    stopped = train(cfg, log=lambda _: None, stop_after_tokens=1024)
    assert stopped.checkpoint_path.is_file()
    assert json.loads(stopped.run_json.read_text())["status"] == "training"
    messages: list[str] = []
    resumed = train(cfg, log=messages.append)
    assert any("resuming" in m for m in messages)

    a, b = _weights(straight.path), _weights(resumed.path)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_output_folder_holding_a_different_run_is_refused(tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, tiny_corpus, out, sites="L1R", tokens=1024), log=lambda _: None)
    with pytest.raises(RunError, match="different run.*sites"):
        train(_cfg(tiny_model_dir, tiny_corpus, out, sites="L0R", tokens=1024), log=lambda _: None)
    with pytest.raises(RunError, match="already holds this finished run"):
        train(_cfg(tiny_model_dir, tiny_corpus, out, sites="L1R", tokens=1024), log=lambda _: None)
    before = _weights(out)
    run = train(_cfg(tiny_model_dir, tiny_corpus, out, sites="L0R", tokens=1024, overwrite=True), log=lambda _: None)
    assert [p.name for p in run.sae_dirs()] == ["blocks.0.hook_resid_post"]
    assert before  # the refused attempts left the first run intact until --overwrite


def test_non_run_folder_is_refused(tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(RunError, match="not empty and holds no run"):
        train(_cfg(tiny_model_dir, tiny_corpus, out), log=lambda _: None)
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"arch": "gated"}, "unknown --arch"),
        ({"k": 0}, "--k 0 must be between"),
        ({"tokens": 100}, "less than one batch"),
        ({"sites": "L9R"}, "out of range"),
        ({"sites": "L1X"}, "L1"),
        ({"context_size": 100_000}, "context size"),
        ({"b_dec_init": "median"}, "b_dec_init"),
        ({"auxk_alpha": -1.0}, "auxk_alpha"),
    ],
)
def test_bad_options_fail_before_writing(overrides, message, tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match=message):
        train(_cfg(tiny_model_dir, tiny_corpus, out, **overrides), log=lambda _: None)
    assert not out.exists()  # nothing half-written


def test_attempt_killed_before_its_first_checkpoint_restarts_clean(tiny_model_dir, tiny_corpus, tmp_path):
    cfg = _cfg(tiny_model_dir, tiny_corpus, tmp_path / "run", sites="L1R", tokens=1024)
    run = train(cfg, log=lambda _: None)
    info = json.loads(run.run_json.read_text())
    info["status"] = "training"  # as if killed before any checkpoint was written
    run.run_json.write_text(json.dumps(info))
    run.log_path.write_text('{"stale": true}\n')
    train(cfg, log=lambda _: None)
    assert "stale" not in run.log_path.read_text()
    assert json.loads(run.run_json.read_text())["status"] == "complete"


def test_low_precision_latent_selection_trains_like_float32(tiny_model_dir, tiny_corpus, tmp_path):
    """--sae-dtype bfloat16 picks latents in bf16 (values exact): same data, close to the float32 run's FVU."""
    fvus = {}
    for dtype in ("float32", "bfloat16"):
        run = train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / dtype, sites="L1M", sae_dtype=dtype), log=lambda _: None)
        last = [json.loads(line) for line in run.log_path.read_text().splitlines()][-1]
        fvus[dtype] = last["fvu"]
    assert 0 < fvus["bfloat16"] < 1
    assert fvus["bfloat16"] == pytest.approx(fvus["float32"], abs=0.02)

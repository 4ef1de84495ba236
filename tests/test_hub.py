"""`hf:ORG/REPO[/PATH][@REV]` sources, read from a Hugging Face cache the tests lay out themselves (no network):
HF_HUB_OFFLINE=1 reads the cache, a missing file says what to do, models and SAEs load from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sae_core.errors import UserError
from sae_core.hub import HubError, HubPath, fetch, parse_hub
from sae_core.loading import load_sae
from sae_core.model.load import load_model
from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache: Path, repo_id: str) -> Path:
    """The cache's folder for `repo_id` at `main`: models--ORG--REPO/{refs/main, snapshots/COMMIT/}, as huggingface_hub lays it out."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_paths_parse_and_print():
    assert parse_hub("hf:google/gemma-scope-2b-pt-res/layer_1/width_16k@main") == HubPath(
        "google/gemma-scope-2b-pt-res", "layer_1/width_16k", "main")
    assert parse_hub("hf:org/repo") == HubPath("org/repo") and not parse_hub("hf:org/repo").is_file
    assert parse_hub("hf:org/repo/layer3.sae.pt").is_file
    assert str(parse_hub("hf:org/repo/a/b@v2")) == "hf:org/repo/a/b@v2"
    with pytest.raises(HubError, match="write hf:ORG/REPO"):
        parse_hub("hf:just-a-name")


def test_saes_load_from_the_cache_offline(hub_cache):
    folder = _snapshot(hub_cache, "google/gemma-scope-2b-pt-res") / "layer_1" / "width_16k" / "average_l0_9"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "params.npz", W_enc=rng.standard_normal((16, 24), np.float32), b_enc=np.zeros(24, np.float32),
             W_dec=rng.standard_normal((24, 16), np.float32), b_dec=np.zeros(16, np.float32), threshold=np.ones(24, np.float32))
    sae = load_sae("hf:google/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_9")
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.d_sae == 24

    qwen = _snapshot(hub_cache, "Qwen/SAE-Res-Qwen3-1.7B-Base-W1K-L0_4")
    torch.save({"W_enc": torch.randn(24, 16), "W_dec": torch.randn(16, 24), "b_enc": torch.zeros(24), "b_dec": torch.zeros(16)},
               qwen / "layer2.sae.pt")
    sae = load_sae("hf:Qwen/SAE-Res-Qwen3-1.7B-Base-W1K-L0_4/layer2.sae.pt@main")
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name) == ("topk", 4, "blocks.2.hook_resid_post")


def test_what_is_not_in_the_cache_offline_is_a_clear_error(hub_cache):
    _snapshot(hub_cache, "org/repo")
    with pytest.raises(HubError, match=r"hf:org/repo/missing.pt is not in the local Hugging Face cache and the Hub cannot "
                       r"be reached \(HF_HUB_OFFLINE=1\)"):
        fetch("hf:org/repo/missing.pt")
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        load_sae("hf:org/never-downloaded/layer_1")
    with pytest.raises(UserError, match="the repository has no 'nope'"):
        fetch("hf:org/repo/nope")


def test_a_model_loads_from_the_cache_offline(hub_cache):
    snapshot = _snapshot(hub_cache, "org/tiny-qwen3")
    tiny_model("qwen3", n_layers=2, d_model=64).save_pretrained(snapshot)
    tiny_tokenizer().save_pretrained(snapshot)
    loaded = load_model("hf:org/tiny-qwen3")
    assert loaded.layout.n_layers == 2 and loaded.layout.d_model == 64
    assert load_model("hf:org/tiny-qwen3@main").layout.d_model == 64


def test_import_records_the_hub_path_it_was_given(hub_cache, tiny_loaded, tmp_path):
    import json

    from sae_core.runs.import_saes import import_saes

    folder = _snapshot(hub_cache, "someone/saes") / "resid_post_layer_1" / "trainer_0"
    folder.mkdir(parents=True)
    torch.save({"W_enc": torch.randn(64, 24), "b_enc": torch.zeros(24), "W_dec": torch.randn(24, 64), "b_dec": torch.zeros(64),
                "threshold": torch.full((24,), 0.1)}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "JumpReluAutoEncoder",
                                                               "submodule_name": "resid_post_layer_1"}}))
    spec = "hf:someone/saes/resid_post_layer_1/trainer_0"
    run = import_saes([spec], tmp_path / "run", tiny_loaded, model=None, log=lambda m: None)
    assert json.loads((run.path / "run.json").read_text())["imported_from"] == {"blocks.1.hook_resid_post": spec}


def test_gemma_scope_2_by_its_saelens_registry_name(hub_cache):
    """saelens:RELEASE/SAE_ID resolves through SAELens's registry; Gemma Scope 2 (params.safetensors + config.json)
    encodes `relu(x @ W_enc + b_enc)` above the threshold, no b_dec on the input."""
    from safetensors.torch import save_file

    folder = _snapshot(hub_cache, "google/gemma-scope-2-270m-it") / "resid_post" / "layer_12_width_16k_l0_big"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    params = {"w_enc": torch.randn(16, 24, generator=g), "b_enc": torch.randn(24, generator=g) * 0.1,
              "w_dec": torch.randn(24, 16, generator=g), "b_dec": torch.randn(16, generator=g), "threshold": torch.rand(24, generator=g)}
    save_file(params, str(folder / "params.safetensors"))
    (folder / "config.json").write_text('{"architecture": "jump_relu", "model_name": "gemma-v3-270m-it", '
                                        '"hf_hook_point_in": "model.layers.12.output"}')
    sae = load_sae("saelens:gemma-scope-2-270m-it-res/layer_12_width_16k_l0_big")
    x = torch.randn(32, 16, generator=g) * 2
    pre = x @ params["w_enc"] + params["b_enc"]
    torch.testing.assert_close(sae.encode(x), torch.relu(pre) * (pre > params["threshold"]), rtol=1e-5, atol=1e-5)
    assert sae.cfg.hook_name == "blocks.12.hook_resid_post" and sae.cfg.metadata["converted_from"] == "gemma_scope_2"
    with pytest.raises(UserError, match="SAELens has no release 'gemma-scope-9-nope'"):
        load_sae("saelens:gemma-scope-9-nope/layer_1")
    with pytest.raises(UserError, match="release gemma-scope-2-270m-it-res has no SAE 'layer_99'; it has"):
        load_sae("saelens:gemma-scope-2-270m-it-res/layer_99")
    with pytest.raises(UserError, match="attention SAEs read hook_z"):
        folder = _snapshot(hub_cache, "google/gemma-scope-2-270m-it") / "attn_out" / "layer_12_width_16k_l0_big"
        folder.mkdir(parents=True)
        save_file(params, str(folder / "params.safetensors"))
        load_sae("saelens:gemma-scope-2-270m-it-att/layer_12_width_16k_l0_big")


def test_other_registry_formats_go_through_saelens_own_converter(monkeypatch):
    """A release whose converter is not ours (here Goodfire's) is loaded by SAELens and read back from the folder
    SAELens saves, encoding exactly as SAELens's SAE does."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    theirs = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=16, d_sae=24, apply_b_dec_to_input=False,
                                                             metadata=SAEMetadata(hook_name="blocks.3.hook_resid_post")))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.3 if name == "threshold" else torch.randn(p.shape, generator=g) * 0.3)
    asked = []
    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", classmethod(lambda cls, r, i, device="cpu": asked.append((r, i)) or theirs))
    release = "goodfire-llama-3.1-8b-instruct"
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    sae_id = next(iter(get_pretrained_saes_directory()[release].saes_map))
    ours = load_sae(f"saelens:{release}/{sae_id}")
    x = torch.randn(20, 16, generator=g)
    assert asked == [(release, sae_id)]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)


def test_release_statistics_import_from_the_cache_offline(hub_cache, tmp_path):
    import pandas as pd

    from sae_core.cli import main
    from sae_core.features.reader import FeatureStore
    from sae_core.testing.synthetic_features import build_synthetic

    run = tmp_path / "run"
    run.mkdir()
    build_synthetic(run / "features.duckdb", n_saes=1, d_sae=64, n_layers=1, vocab_size=100, n_contexts=4, context_size=16)
    folder = _snapshot(hub_cache, "org/sae-release") / "reverse-index" / "l0"
    folder.mkdir(parents=True)
    pd.DataFrame({"feature_id": [5], "max_activation": [3.5]}).to_parquet(folder / "feature_metrics.parquet")
    assert main(["import-stats", str(run), "hf:org/sae-release/reverse-index/l0", "--sae", "L0R"]) == 0
    with FeatureStore(run) as store:
        release = store.feature("L0R", 5).release.features
    assert list(release.origin) == ["hf:org/sae-release/reverse-index/l0"] and release.max_act.iloc[0] == 3.5

"""Activation cache: `sae-explorer cache` stores exactly what the harvest sees; training on it equals training on the model."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import _cfg, _weights

from sae_core.activations.cache import check_cache, load_cached, read_info, write_cache
from sae_core.activations.harvest import harvest_chunks
from sae_core.cli import main
from sae_core.errors import UserError
from sae_core.model.load import load_model
from sae_core.model.sites import parse_sites
from sae_core.text.corpus import iter_documents
from sae_core.text.tokens import token_batches
from sae_core.training import train


@pytest.fixture(scope="module")
def cache_dir(tiny_model_dir, tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("caches") / "l0r-l1m-l1a-l1t"
    code = main([
        "cache", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--sites", "L0R,L1M,L1A,L1T",
        "--tokens", "20k", "--context-size", "32", "--lm-batch-size", "4", "--shard-tokens", "1024",
        "--out", str(folder), "--device", "cpu",
    ])
    assert code == 0
    return folder


def test_cache_holds_exactly_the_harvested_activations(cache_dir, tiny_model_dir, tiny_corpus):
    info = read_info(cache_dir)
    assert info["tokens"] == 20_000 and info["split"] == "train" and info["context_size"] == 32
    assert info["sites"] == ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.hook_attn_out",
                             "blocks.1.ln2.hook_normalized"]
    assert not cache_dir.with_name(cache_dir.name + ".partial").exists()
    loaded = load_model(str(tiny_model_dir))
    sites = parse_sites("L0R,L1M,L1T", loaded.layout.n_layers)  # a transcoder's rows: MLP input and output
    batches = token_batches(iter_documents(str(tiny_corpus), "train"), loaded.tokenizer, 32, 4)
    direct = {s: [] for s in sites}
    for chunk in harvest_chunks(loaded, sites, batches, 1024):
        for s in sites:
            direct[s].append(chunk.acts[s])
        if sum(len(t) for t in direct[sites[0]]) >= 20_000:
            break
    for s in sites:
        torch.testing.assert_close(load_cached(cache_dir, s.hook_name), torch.cat(direct[s])[:20_000], rtol=0, atol=0)


def test_training_on_the_cache_equals_training_on_the_model(cache_dir, tiny_model_dir, tiny_corpus, tmp_path):
    # chunk_tokens = the cache's shard size, so both see the same chunks in the same order
    from_model = train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / "model", sites="L0R,L1M,L1A,L1T"), log=lambda _: None)
    cfg = _cfg(tiny_model_dir, tiny_corpus, tmp_path / "cache", activation_cache=str(cache_dir), sites="L0R,L1M,L1A,L1T")
    from_cache = train(cfg, log=lambda _: None)
    a, b = _weights(from_model.path), _weights(from_cache.path)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert "activation cache" in json.loads(from_cache.run_json.read_text())["corpus"]


def test_training_on_the_cache_resumes_and_loops_over_it(cache_dir, tiny_model_dir, tiny_corpus, tmp_path):
    # 24k tokens per SAE from a 20k-token cache: a second pass over it, and a stop + resume in the middle
    cfg = _cfg(tiny_model_dir, tiny_corpus, tmp_path / "a", activation_cache=str(cache_dir), tokens=24_000, sites="L1A",
               checkpoint_every=4096)
    messages: list[str] = []
    straight = train(cfg, log=messages.append)
    assert any("starting pass 2" in m for m in messages)
    cfg_b = _cfg(tiny_model_dir, tiny_corpus, tmp_path / "b", activation_cache=str(cache_dir), tokens=24_000, sites="L1A",
                 checkpoint_every=4096)
    train(cfg_b, log=lambda _: None, stop_after_tokens=8192)
    resumed = train(cfg_b, log=lambda _: None)
    a, b = _weights(straight.path), _weights(resumed.path)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_cache_errors_say_what_to_do(cache_dir, tiny_model_dir, tiny_corpus, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    with pytest.raises(UserError, match="lacks blocks.0.hook_mlp_out"):
        check_cache(cache_dir, loaded.name, parse_sites("L0M", 2))
    with pytest.raises(UserError, match="not other-model"):
        check_cache(cache_dir, "other-model", parse_sites("L0R", 2))
    with pytest.raises(UserError, match="not an activation cache"):
        read_info(tmp_path)
    with pytest.raises(UserError, match="already exists"):
        write_cache(loaded, parse_sites("L0R", 2), iter([]), 10, cache_dir)
    cfg = _cfg(tiny_model_dir, tiny_corpus, tmp_path / "run", activation_cache=str(cache_dir), sites="L0M")
    with pytest.raises(UserError, match="lacks"):
        train(cfg, log=lambda _: None)
    assert not (tmp_path / "run" / "saes").exists()

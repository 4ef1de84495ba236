"""Replaying a model from one layer on gives the logits of a full forward pass, hooks included, for every family."""

from __future__ import annotations

import pytest
import torch

from sae_core.model.hooks import splice
from sae_core.model.layout import find_layout
from sae_core.model.replay import LayerReplay
from sae_core.model.sites import Site
from sae_core.testing.tiny_models import tiny_model


@pytest.mark.parametrize("family", ["qwen3", "llama", "gemma3", "gpt2"])
def test_replay_matches_full_forward_passes_with_a_splice(family):
    model = tiny_model(family, n_layers=3, d_model=64)
    layout = find_layout(model)
    ids = torch.randint(3, 200, (2, 12))
    attn = torch.ones_like(ids)
    with torch.no_grad():
        replay = LayerReplay(model, layout, ids, attn)
        assert replay.exact
        torch.testing.assert_close(replay.logits, model(input_ids=ids, attention_mask=attn).logits)
        for site in (Site(0, "attn_out"), Site(1, "mlp_out"), Site(2, "resid_post")):
            with splice(model, site, lambda x, _: 0.5 * x, layout=layout):
                full = model(input_ids=ids, attention_mask=attn).logits
                torch.testing.assert_close(replay.from_layer(site.layer), full, rtol=1e-4, atol=1e-5)
        # the clean pass left no hooks behind, and a replay without a splice is the clean logits
        assert not any(layer._forward_pre_hooks for layer in layout.layers)
        torch.testing.assert_close(replay.from_layer(1), replay.logits, rtol=1e-4, atol=1e-5)


def test_a_head_that_does_more_than_norm_and_unembed_is_detected():
    model = tiny_model("gemma2", n_layers=2, d_model=64)
    model.config.final_logit_softcapping = 0.5  # squashes the logits after the unembedding
    layout = find_layout(model)
    ids = torch.randint(3, 200, (1, 8))
    with torch.no_grad():
        assert not LayerReplay(model, layout, ids, torch.ones_like(ids)).exact

"""Logit effects through the final norm, against a direct computation on tiny models."""

from __future__ import annotations

import pytest
import torch

from sae_core.features.logit_effects import logit_effects
from sae_core.model.layout import find_layout
from sae_core.testing.tiny_models import tiny_model


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_logit_effects_match_direct_computation(family):
    model = tiny_model(family, n_layers=1, d_model=32)
    layout = find_layout(model)
    with torch.no_grad():  # a non-trivial norm scale, so that skipping it would show
        layout.final_norm.weight.copy_(torch.linspace(-0.5, 2.0, 32))
    W_dec = torch.randn(9, 32, generator=torch.Generator().manual_seed(0))
    effects = logit_effects(W_dec, layout, n=4, block=4)
    w = layout.final_norm.weight
    d = W_dec - W_dec.mean(-1, keepdim=True) if family == "gpt2" else W_dec
    scale = 1 + w if family.startswith("gemma") else w
    direct = (d * scale) @ layout.unembed.weight.T
    top, bottom = direct.topk(4, dim=-1), direct.topk(4, dim=-1, largest=False)
    assert torch.equal(effects.top_ids, top.indices) and torch.allclose(effects.top_values, top.values, atol=1e-5)
    assert torch.equal(effects.bottom_ids, bottom.indices)
    assert torch.allclose(effects.bottom_values, bottom.values, atol=1e-5)

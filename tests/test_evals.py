"""Every metric against a value computed by hand (or by an independent formula)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sae_core.evals import CEAccumulator, ReconstructionAccumulator, evaluate_saes, kl_sum, next_token_loss
from sae_core.models import load_model
from sae_core.saes import SAEConfig, sae_from_state
from sae_core.sites import Site
from sae_core.tokens import TokenBatch, real_token_mask


def test_reconstruction_metrics_by_hand():
    # Two tokens in 2-d, three latents.
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    acts = torch.tensor([[0.5, 0.0, 0.0], [0.0, 2.0, 1.0]])
    acc = ReconstructionAccumulator(d_in=2, d_sae=3, dense_threshold=0.6)
    acc.update(x, acts, x_hat)
    m = acc.result()
    # errors: (0,-1), (1,0) → SSE = 2. mean x = (2, 1); deviations (-1,-1), (1,1) → total variance 4.
    assert m["fvu"] == pytest.approx(0.5)
    assert m["explained_variance"] == pytest.approx(0.5)
    assert m["mse"] == pytest.approx(2 / 4)
    assert m["l0"] == pytest.approx(1.5)
    assert m["dead_fraction"] == pytest.approx(0.0)
    # latent densities: 0.5, 0.5, 0.5 → none above 0.6
    assert m["dense_fraction"] == pytest.approx(0.0)
    cos = (1 / math.sqrt(2) + (6 + 4) / (math.sqrt(13) * math.sqrt(8))) / 2
    assert m["cossim"] == pytest.approx(cos)
    assert m["l2_ratio"] == pytest.approx((math.sqrt(2) / 1 + math.sqrt(8) / math.sqrt(13)) / 2)


def test_reconstruction_metrics_aggregate_over_batches_not_per_batch():
    torch.manual_seed(0)
    x = torch.randn(100, 8) + 3.0
    x_hat = x + 0.3 * torch.randn(100, 8)
    acts = torch.relu(torch.randn(100, 16))
    acts[:, 5] = 0  # latent 5 never fires → dead
    whole = ReconstructionAccumulator(8, 16)
    whole.update(x, acts, x_hat)
    parts = ReconstructionAccumulator(8, 16)
    for i in range(0, 100, 7):
        parts.update(x[i : i + 7], acts[i : i + 7], x_hat[i : i + 7])
    for key, value in whole.result().items():
        assert parts.result()[key] == pytest.approx(value, rel=1e-9)
    expected_fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert whole.result()["fvu"] == pytest.approx(float(expected_fvu), rel=1e-6)
    assert whole.result()["dead_fraction"] == pytest.approx(1 / 16)


def test_next_token_loss_matches_cross_entropy_on_masked_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.ones(2, 5)
    mask[1, 3] = 0  # target at position 3 of row 1 is not a real token
    _, ce = next_token_loss(logits, ids, mask)
    per_pos = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none").view(2, 4)
    assert float(ce) == pytest.approx(float((per_pos * mask[:, 1:]).sum()), rel=1e-6)


def test_kl_matches_torch_kl_div():
    torch.manual_seed(0)
    a, b = torch.randn(1, 4, 7).log_softmax(-1), torch.randn(1, 4, 7).log_softmax(-1)
    mask = torch.ones(1, 5)
    expected = F.kl_div(b, a, log_target=True, reduction="sum")
    assert float(kl_sum(a, b, mask)) == pytest.approx(float(expected), rel=1e-6)


def test_ce_loss_recovered_formula():
    acc = CEAccumulator(n=10, clean=20.0, sae=25.0, ablated=70.0, kl=1.0)
    m = acc.result()
    # (7.0 - 2.5) / (7.0 - 2.0)
    assert m["ce_loss_recovered"] == pytest.approx(0.9)
    assert m["delta_lm_loss"] == pytest.approx(0.5)
    assert m["kl_div"] == pytest.approx(0.1)


def _exact_sae(d: int, hook: str) -> object:
    """A ReLU SAE with W_enc = [I, -I]: relu(x) - relu(-x) = x, a perfect reconstruction."""
    eye = torch.eye(d)
    cfg = SAEConfig(architecture="standard", d_in=d, d_sae=2 * d, hook_name=hook)
    return sae_from_state(cfg, {
        "W_enc": torch.cat([eye, -eye], dim=1),
        "b_enc": torch.zeros(2 * d),
        "W_dec": torch.cat([eye, -eye], dim=0),
        "b_dec": torch.zeros(d),
    })


def _zero_sae(d: int, hook: str) -> object:
    cfg = SAEConfig(architecture="standard", d_in=d, d_sae=4, hook_name=hook)
    return sae_from_state(cfg, {
        "W_enc": torch.zeros(d, 4), "b_enc": torch.zeros(4), "W_dec": torch.zeros(4, d), "b_dec": torch.zeros(d),
    })


def _batches(tokenizer, n=3):
    torch.manual_seed(0)
    for _ in range(n):
        ids = torch.randint(3, len(tokenizer), (2, 16))
        yield TokenBatch(ids, torch.ones_like(ids), real_token_mask(ids, tokenizer.all_special_ids))


def test_perfect_sae_recovers_everything_and_zero_sae_nothing(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    exact, zero = Site(1, "resid_post"), Site(0, "mlp_out")
    saes = {exact: _exact_sae(64, exact.hook_name), zero: _zero_sae(64, zero.hook_name)}
    m = evaluate_saes(loaded, saes, _batches(loaded.tokenizer), eval_tokens=10_000, ce_tokens=10_000)
    assert m[exact]["fvu"] == pytest.approx(0.0, abs=1e-9)
    assert m[exact]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m[exact]["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert m[exact]["delta_lm_loss"] == pytest.approx(0.0, abs=1e-5)
    assert m[zero]["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert m[zero]["fvu"] >= 1.0  # reconstructing zero explains no variance (less, unless the mean is 0)
    assert m[zero]["dead_fraction"] == 1.0 and m[zero]["l0"] == 0.0
    # 3 batches x 2 contexts x 15 real tokens (position 0 never counts)
    assert m[exact]["eval_tokens"] == 90

"""Every metric against a value computed by hand (or by an independent formula)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sae_core.evaluation.evaluate_run import shortfall_note
from sae_core.evaluation.metrics import (
    CE_GAP_MIN,
    CEAccumulator,
    ReconstructionAccumulator,
    evaluate_saes,
    kl_sum,
    next_token_loss,
)
from sae_core.model.load import load_model
from sae_core.model.sites import Site
from sae_core.saes import SAEConfig, sae_from_state
from sae_core.text.tokens import TokenBatch, real_token_mask


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
        assert parts.result()[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value)
    expected_fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert whole.result()["fvu"] == pytest.approx(float(expected_fvu), rel=1e-6)
    assert whole.result()["dead_fraction"] == pytest.approx(1 / 16)


def test_next_token_loss_matches_cross_entropy_on_masked_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.ones(2, 5)
    mask[1, 3] = 0  # target at position 3 of row 1 is not a real token
    _, nll = next_token_loss(logits, ids, mask)
    per_pos = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none").view(2, 4)
    torch.testing.assert_close(nll, per_pos * mask[:, 1:])


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
    assert m[exact]["ce_loss_recovered_raw"] == pytest.approx(1.0, abs=1e-4)
    assert m[exact]["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert m[exact]["delta_lm_loss"] == pytest.approx(0.0, abs=1e-5)
    assert m[zero]["ce_loss_recovered_raw"] == pytest.approx(0.0, abs=1e-6)
    assert m[zero]["fvu"] >= 1.0  # reconstructing zero explains no variance (less, unless the mean is 0)
    assert m[zero]["dead_fraction"] == 1.0 and m[zero]["l0"] == 0.0
    # 3 batches x 2 contexts x 15 real tokens (position 0 never counts)
    assert m[exact]["eval_tokens"] == 90


def test_ce_loss_recovered_is_na_when_zero_ablation_barely_moves_the_loss():
    # gap 0.02 nats: the ratio (2.0 + 0.3 - 2.0 ...) would read as -14 and mean nothing
    acc = CEAccumulator(n=100, clean=200.0, sae=230.0, ablated=202.0)
    m = acc.result()
    assert m["ce_loss_recovered"] is None
    assert m["ce_loss_recovered_raw"] == pytest.approx((2.02 - 2.30) / 0.02)
    assert "0.020 nats" in m["ce_loss_recovered_note"] and str(CE_GAP_MIN) in m["ce_loss_recovered_note"]
    trusted = CEAccumulator(n=100, clean=200.0, sae=230.0, ablated=200.0 + 200 * CE_GAP_MIN).result()
    assert trusted["ce_loss_recovered"] is not None and trusted["ce_loss_recovered_note"] is None
    helped = CEAccumulator(n=100, clean=200.0, sae=210.0, ablated=150.0).result()  # ablation lowers the loss
    assert helped["ce_loss_recovered"] is None and "lowers the loss (by 0.500 nats)" in helped["ce_loss_recovered_note"]


def test_delta_lm_loss_standard_error():
    diffs = torch.tensor([0.5, -0.1, 0.3, 0.0, 0.9], dtype=torch.float64)
    acc = CEAccumulator(n=5, clean=10.0, sae=10.0 + float(diffs.sum()), ablated=20.0, delta_sq=float(diffs.pow(2).sum()))
    m = acc.result()
    assert m["delta_lm_loss"] == pytest.approx(float(diffs.mean()))
    assert m["delta_lm_loss_se"] == pytest.approx(float(diffs.std(unbiased=False)) / 5**0.5)


def test_dead_fraction_warns_when_the_window_is_too_short():
    d_sae, k = 64, 2
    torch.manual_seed(0)
    def window(n_tokens):
        acc = ReconstructionAccumulator(d_in=4, d_sae=d_sae)
        acts = torch.zeros(n_tokens, d_sae)
        acts[torch.arange(n_tokens)[:, None], torch.randint(0, d_sae, (n_tokens, k))] = 1.0
        x = torch.randn(n_tokens, 4)
        acc.update(x, acts, x)
        return acc.result()
    short = window(8)  # a latent of average density fires 8 x 2 / 64 = 0.25 times here
    assert short["dead_window_tokens"] == 8 and short["dead_fraction"] > 0.5
    assert "only 8 tokens" in short["dead_fraction_note"]
    assert window(2_000)["dead_fraction_note"] is None  # 62 expected fires


def _silenced_attention(tiny_model_dir, layer: int):
    """The tiny model with one layer's attention output projection zeroed: its attn_out site is always 0."""
    loaded = load_model(str(tiny_model_dir))
    loaded.model.model.layers[layer].self_attn.o_proj.weight.zero_()
    return loaded


def test_a_site_whose_ablation_changes_nothing_reports_na(tiny_model_dir):
    loaded = _silenced_attention(tiny_model_dir, 0)
    silent = Site(0, "attn_out")
    m = evaluate_saes(loaded, {silent: _zero_sae(64, silent.hook_name)}, _batches(loaded.tokenizer),
                      eval_tokens=10_000, ce_tokens=10_000)[silent]
    assert m["ce_loss_zero_ablation"] == pytest.approx(m["ce_loss_clean"], abs=1e-6)
    assert m["ce_loss_recovered"] is None and "0.000 nats" in m["ce_loss_recovered_note"]
    assert math.isnan(m["fvu"])  # a constant site: no variance to explain, and no crash


def test_fewer_held_out_tokens_than_asked_are_reported(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    site = Site(1, "resid_post")
    m = evaluate_saes(loaded, {site: _exact_sae(64, site.hook_name)}, _batches(loaded.tokenizer),
                      eval_tokens=4_000, ce_tokens=30)[site]
    assert (m["eval_tokens_requested"], m["eval_tokens_available"]) == (4_000, 90)
    assert (m["ce_tokens_requested"], m["ce_tokens_available"]) == (30, 30)
    note = shortfall_note(m, "corpus.txt")
    assert "90 of the 4,000 reconstruction tokens" in note and "CE-loss" not in note and "corpus.txt" in note
    assert shortfall_note({**m, "eval_tokens_requested": 90}, "corpus.txt") is None

"""SAE architectures: inference formulas, the fused TopK encoder, AuxK, BatchTopK, folding and decoder norms."""

from __future__ import annotations

import pytest
import torch

from sae_core.errors import UserError
from sae_core.saes import (
    ARCHITECTURES,
    BatchTopKTrainingSAE,
    JumpReLUSAE,
    SAEConfig,
    SAETrainingOptions,
    TopKSAE,
    create_training_sae,
    sae_from_state,
    sparse_ops,
)
from sae_core.saes.batchtopk import batch_topk
from sae_core.saes.init import geometric_median
from sae_core.saes.jumprelu import JumpReLUFunction, StepFunction
from sae_core.saes.reference import reference_losses
from sae_core.saes.sparse_ops import per_token, scatter_rows, sparse_decode, topk_rows
from sae_core.saes.topk import FusedTopKEncoder, auxk_loss, fit_encoder_scale

D_IN, D_SAE, K = 16, 64, 4


def make_cfg(arch: str, d_in: int = D_IN, d_sae: int = D_SAE, k: int = K) -> SAEConfig:
    return SAEConfig(arch, d_in, d_sae, k=k if arch in ("topk", "batchtopk") else None, hook_name="blocks.1.hook_resid_post")


def random_tensors(cfg: SAEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(cfg.d_in, cfg.d_sae, generator=g) / cfg.d_in**0.5,
        "b_enc": torch.randn(cfg.d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(cfg.d_sae, cfg.d_in, generator=g) / cfg.d_in**0.5,
        "b_dec": torch.randn(cfg.d_in, generator=g) * 0.1,
        "threshold": torch.rand(cfg.d_sae, generator=g) * 0.5,
    }


def randomised_training_sae(arch: str, seed: int = 0):
    """A training SAE with non-trivial biases (and thresholds) so folding tests see every term."""
    sae = create_training_sae(make_cfg(arch), SAETrainingOptions(), torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.2)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.5)
        if arch == "batchtopk":
            sae.topk_threshold.fill_(0.3)
    return sae


def dense_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: ReLU, then keep each row's k largest values (sparsify's order of operations)."""
    values, indices = pre.relu().topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


# Inference --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_inference_shapes_and_activation_formulas(arch: str) -> None:
    cfg = make_cfg(arch)
    tensors = random_tensors(cfg)
    sae = sae_from_state(cfg, tensors)
    x = torch.randn(2, 3, D_IN, generator=torch.Generator().manual_seed(5))
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    torch.testing.assert_close(sae.pre_acts(x), pre)
    acts = sae.encode(x)
    assert acts.shape == (2, 3, D_SAE)
    if arch == "topk":
        values, indices = pre.topk(K, dim=-1)
        expected = torch.zeros_like(pre).scatter(-1, indices, values.relu())  # SAELens: topk, then ReLU
        torch.testing.assert_close(acts, expected)
        torch.testing.assert_close(acts, dense_topk(pre, K))  # = sparsify: ReLU, then topk
        values, indices = sae.encode_topk(x)
        torch.testing.assert_close(torch.zeros_like(pre).scatter(-1, indices, values), acts)
    elif arch == "jumprelu":
        torch.testing.assert_close(acts, pre.relu() * (pre > tensors["threshold"]))
    else:
        torch.testing.assert_close(acts, pre.relu())
    recon = sae.decode(acts)
    assert recon.shape == x.shape
    torch.testing.assert_close(recon, acts @ tensors["W_dec"] + tensors["b_dec"])
    torch.testing.assert_close(sae(x), recon)


def test_inference_weights_do_not_require_grad() -> None:
    sae = sae_from_state(make_cfg("topk"), random_tensors(make_cfg("topk")))
    assert not any(p.requires_grad for p in sae.parameters())


def test_batchtopk_infers_as_jumprelu() -> None:
    cfg = make_cfg("batchtopk")
    sae = sae_from_state(cfg, random_tensors(cfg))
    assert isinstance(sae, JumpReLUSAE) and sae.cfg.architecture == "jumprelu"
    assert ARCHITECTURES["batchtopk"][0] is JumpReLUSAE


# Init and decoder norms -------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_init_is_unit_norm_tied_and_deterministic(arch: str) -> None:
    a = create_training_sae(make_cfg(arch), SAETrainingOptions(), torch.Generator().manual_seed(3))
    b = create_training_sae(make_cfg(arch), SAETrainingOptions(), torch.Generator().manual_seed(3))
    c = create_training_sae(make_cfg(arch), SAETrainingOptions(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(D_SAE))
    assert torch.equal(a.W_enc, a.W_dec.T) and a.W_enc_T.is_contiguous() and a.W_enc.data_ptr() != a.W_dec.data_ptr()
    assert torch.equal(a.b_enc, torch.zeros(D_SAE))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.W_dec, c.W_dec)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_decoder_rows_renormalised_and_parallel_gradient_removed(arch: str) -> None:
    sae = create_training_sae(make_cfg(arch), SAETrainingOptions(), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(D_SAE, D_IN, generator=g)
    sae.W_dec.grad = grad.clone()
    sae.before_optimizer_step()
    W = sae.W_dec.detach()
    torch.testing.assert_close((sae.W_dec.grad * W).sum(1), torch.zeros(D_SAE), atol=1e-5, rtol=0)
    perpendicular = grad - (grad * W).sum(1, keepdim=True) * W
    torch.testing.assert_close(sae.W_dec.grad, perpendicular)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1, generator=g) * 3 + 0.1)
    sae.after_optimizer_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


@pytest.mark.parametrize("how", ["geometric_median", "mean", "zeros"])
def test_init_from_data_sets_b_dec(how: str) -> None:
    sae = create_training_sae(make_cfg("topk"), SAETrainingOptions(b_dec_init=how), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, D_IN, generator=g) + 5.0
    x[:10] += 1000.0  # outliers pull the mean, not the median
    sae.init_from_data(x)
    if how == "zeros":
        assert torch.equal(sae.b_dec, torch.zeros(D_IN))
    elif how == "mean":
        torch.testing.assert_close(sae.b_dec.detach(), x.mean(0))
    else:
        assert (sae.b_dec - 5.0).abs().max() < 0.5
        assert (x.mean(0) - 5.0).abs().min() > 20


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_init_fits_the_encoder_scale_by_least_squares(arch: str) -> None:
    sae = create_training_sae(make_cfg(arch), SAETrainingOptions(), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, D_IN, generator=g) + torch.randn(D_IN, generator=g)
    sae.init_from_data(x)
    scale = float(sae.W_enc_T.detach().norm(dim=1).mean())
    assert 0 < scale < 1  # the tied unit-norm init overshoots on correlated latents
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T * scale)  # still tied in direction
    assert fit_encoder_scale(sae, x) == pytest.approx(1.0, abs=1e-5)  # already the least-squares optimum
    with torch.no_grad():
        recon = dense_topk((x - sae.b_dec) @ sae.W_enc, K) @ sae.W_dec
        errors = [float(((x - sae.b_dec) - f * recon).pow(2).sum()) for f in (0.95, 1.0, 1.05)]
    assert errors[1] < min(errors[0], errors[2])


def test_geometric_median_minimises_summed_distance() -> None:
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0)) ** 3
    m = geometric_median(x)
    cost = lambda y: float((x - y).norm(dim=1).sum())  # noqa: E731
    for direction in torch.eye(5):
        assert cost(m) <= cost(m + 0.01 * direction) + 1e-6
        assert cost(m) <= cost(m - 0.01 * direction) + 1e-6


# Fused TopK encoder and sparse decoder ----------------------------------------------------


@pytest.fixture(params=["torch", "numpy"])
def matmul_backend(request, choose_matmul) -> str:
    """The encoder's block matmul through PyTorch's BLAS or numpy's (`cpu_matmul`), whichever this machine picks."""
    choose_matmul(request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_topk_encoder_matches_dense_reference(dtype: torch.dtype, matmul_backend: str) -> None:
    n, d_in, d_sae, k = 48, 12, 80, 6
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, d_in, generator=g, dtype=dtype)
    W0 = torch.randn(d_in, d_sae, generator=g, dtype=dtype)
    b0 = torch.randn(d_sae, generator=g, dtype=dtype) * 0.5 - 1.0
    x0[: n // 2] *= 0.1  # these tokens have fewer than k positive pre-activations: selected zeros get no gradient
    bd0 = torch.randn(d_in, generator=g, dtype=dtype) * 0.1
    weight = torch.randn(n, d_sae, generator=g, dtype=dtype)

    def leaves() -> list[torch.Tensor]:
        return [t.clone().requires_grad_(True) for t in (x0, W0, b0, bd0)]

    x, W, b, bd = leaves()
    values, indices, _, _ = FusedTopKEncoder.apply(x, W, b, bd, k, None, 0, 7)  # blocks of 7 rows: a ragged last block
    fused = torch.zeros(n, d_sae, dtype=dtype).scatter(1, indices, values)
    (fused * weight).sum().backward()

    xr, Wr, br, bdr = leaves()
    pre_ref = (xr - bdr) @ Wr + br
    reference = dense_topk(pre_ref, k)
    (reference * weight).sum().backward()

    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    assert (reference == 0).sum(1).max() > d_sae - k  # the zero case is exercised
    torch.testing.assert_close(fused, reference.detach(), **tol)
    positive = values > 0
    ref_idx = pre_ref.detach().relu().topk(k, dim=-1).indices
    assert all(
        set(indices[i][positive[i]].tolist()) <= set(ref_idx[i].tolist()) for i in range(n)
    )
    for mine, ref in ((x, xr), (W, Wr), (b, br), (bd, bdr)):
        torch.testing.assert_close(mine.grad, ref.grad, **tol)


@pytest.mark.parametrize("shape, k, values", [
    ((64, 8192), 32, "normal"), ((3, 5, 4608), 20, "normal"),  # 4608 = 16 · 288: groups of 16
    ((16, 4104), 32, "normal"),  # 4104 = 8 · 513: groups of 8
    ((32, 8192), 32, "ties"), ((8, 4096), 16, "constant"), ((8, 4096), 16, "negative"),
])
def test_grouped_topk_selects_the_same_values_as_topk(shape, k, values) -> None:
    g = torch.Generator().manual_seed(0)
    pre = {"normal": lambda: torch.randn(shape, generator=g),
           "ties": lambda: torch.randint(-3, 4, shape, generator=g).float(),  # thousands of ties at the k-th value
           "constant": lambda: torch.full(shape, 0.5),
           "negative": lambda: -torch.rand(shape, generator=g) - 1}[values]()
    top, indices = topk_rows(pre, k)
    expected = pre.topk(k, dim=-1, sorted=False).values
    assert top.shape == indices.shape == (*shape[:-1], k)
    torch.testing.assert_close(top.sort(-1).values, expected.sort(-1).values, rtol=0, atol=0)
    torch.testing.assert_close(pre.gather(-1, indices), top, rtol=0, atol=0)  # each value sits at its index
    flat = indices.reshape(-1, k)
    assert all(len(set(row.tolist())) == k for row in flat)  # k distinct columns a row


def test_sparse_decode_equals_dense_decode() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(20, K, generator=g)
    indices = torch.stack([torch.randperm(D_SAE, generator=g)[:K] for _ in range(20)])
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    dense = torch.zeros(20, D_SAE).scatter(1, indices, values)
    torch.testing.assert_close(sparse_decode(per_token(values, indices), W_dec), dense @ W_dec)


def test_topk_training_reports_l0_and_fired_latents() -> None:
    sae = randomised_training_sae("topk")
    x = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(9)) * 2
    out = sae.training_forward(x, dead_mask=None, step_frac=0.5)
    acts = dense_topk((x - sae.b_dec) @ sae.W_enc + sae.b_enc, K)
    assert out.l0 == K
    assert out.fired.tolist() == (acts > 0).any(0).tolist()


# AuxK ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_zero_without_dead_latents(arch: str) -> None:
    sae = randomised_training_sae(arch)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    for dead in (None, torch.zeros(D_SAE, dtype=torch.bool)):
        out = sae.training_forward(x, dead_mask=dead, step_frac=0.5)
        assert float(out.losses["auxk"]) == 0.0


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_positive_and_reaches_only_dead_latents(arch: str) -> None:
    sae = randomised_training_sae(arch)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True
    out = sae.training_forward(x, dead_mask=dead, step_frac=0.5)
    assert float(out.losses["auxk"].detach()) > 0
    out.losses["auxk"].backward()
    touched_dec = sae.W_dec.grad.abs().sum(1) > 0
    touched_enc = sae.W_enc_T.grad.abs().sum(1) > 0
    touched_b = sae.b_enc.grad != 0
    assert touched_dec.any() and touched_enc.any()
    for touched in (touched_dec, touched_enc, touched_b):
        assert not (touched & ~dead).any()


def test_auxk_scale_and_weight() -> None:
    opts = SAETrainingOptions(auxk_alpha=0.5, auxk_k=8)
    sae = create_training_sae(make_cfg("topk"), opts, torch.Generator().manual_seed(0))
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:2] = True  # 2 dead of auxk_k=8: the loss is scaled by 2/8
    out = sae.training_forward(x, dead_mask=dead, step_frac=0.5)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu().detach()
    aux = per_token(pre[:, :2], torch.tensor([[0, 1]]).expand(32, 2))
    raw = auxk_loss(sae, x, aux, 2, (x - out.x_hat).detach(), (x - x.mean(0)).pow(2).sum())
    acts = torch.zeros_like(pre)
    acts[:, :2] = pre[:, :2]
    expected = 0.25 * ((acts @ sae.W_dec) - (x - out.x_hat)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(raw, expected)
    torch.testing.assert_close(out.losses["auxk"], 0.5 * expected)


# Fast paths against the plain dense reference ------------------------------------------------


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_fast_training_losses_and_gradients_equal_the_dense_reference(arch: str, dtype: torch.dtype, with_dead: bool,
                                                                      grouped: bool, matmul_backend: str, monkeypatch) -> None:
    """The whole training forward + backward (fused blocked encoder, sparse decoder, sparse AuxK) vs plain autograd;
    `grouped`: with the grouped top-k that wide SAEs use (`topk_rows`) at this small width too."""
    if grouped:
        monkeypatch.setattr(sparse_ops, "MIN_GROUPED_WIDTH", 0)
    opts = SAETrainingOptions(auxk_alpha=0.25, auxk_k=6)
    cfg = make_cfg(arch, d_in=24, d_sae=160, k=5)
    sae = create_training_sae(cfg, opts, torch.Generator().manual_seed(3)).to(dtype)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(160, generator=g, dtype=dtype) * 0.3)
        sae.b_dec.copy_(torch.randn(24, generator=g, dtype=dtype))
    if arch == "topk":
        sae.block_rows = 13  # several blocks and a ragged last one
    x = torch.randn(50, 24, generator=g, dtype=dtype) * 1.5
    dead = torch.zeros(160, dtype=torch.bool)
    if with_dead:
        dead[torch.randperm(160, generator=g)[:40]] = True
    reference = create_training_sae(cfg, opts).to(dtype)
    reference.load_state_dict(sae.state_dict())

    out = sae.training_forward(x, dead_mask=dead, step_frac=0.5)
    sum(out.losses.values()).backward()
    x_hat, losses, fired = reference_losses(reference, x, dead)
    sum(losses.values()).backward()

    tol = {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}
    torch.testing.assert_close(out.x_hat, x_hat.detach(), **tol)
    for name in ("fvu", "auxk"):
        torch.testing.assert_close(out.losses[name].detach(), losses[name].detach(), **tol)
    assert (float(out.losses["auxk"].detach()) > 0) == with_dead
    assert out.fired.tolist() == fired.tolist()
    for (name, mine), ref in zip(sae.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine.grad, ref.grad, **tol, msg=lambda m, name=name: f"{name}: {m}")
        assert mine.grad.stride() == mine.stride(), name  # the layout fused Adam relies on


def test_training_encoder_is_stored_per_latent_and_saves_in_saelens_shape() -> None:
    sae = randomised_training_sae("topk")
    assert sae.W_enc_T.shape == (D_SAE, D_IN) and sae.W_enc.shape == (D_IN, D_SAE)
    assert "W_enc" not in dict(sae.named_parameters())
    inference = sae.to_inference(2.0)
    assert inference.W_enc.shape == (D_IN, D_SAE)
    torch.testing.assert_close(inference.W_enc, sae.W_enc.detach())


def test_scatter_rows_sums_weighted_rows_per_latent() -> None:
    g = torch.Generator().manual_seed(0)
    latents = torch.randint(0, 9, (40,), generator=g)
    latents[latents == 8] = 7  # latent 8 (the last) gets no entries: an empty trailing bag
    tokens = torch.randint(0, 6, (40,), generator=g)
    weights, rows = torch.randn(40, generator=g), torch.randn(6, 5, generator=g)
    expected = torch.zeros(9, 5).index_add_(0, latents, weights[:, None] * rows[tokens])
    torch.testing.assert_close(scatter_rows(latents, tokens, weights, rows, 9), expected)


# BatchTopK ----------------------------------------------------------------------------------


def test_batchtopk_keeps_k_times_n_activations_across_the_batch() -> None:
    sae = randomised_training_sae("batchtopk")
    n = 32
    x = torch.randn(n, D_IN, generator=torch.Generator().manual_seed(4))
    out = sae.training_forward(x, dead_mask=None, step_frac=0.5)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu().detach()
    values, flat = pre.flatten().topk(K * n)
    acts = torch.zeros(n * D_SAE).scatter(0, flat, values).view(n, D_SAE)
    assert int((acts > 0).sum()) == K * n
    assert float(out.l0) == K
    per_token_counts = (acts > 0).sum(1)
    assert per_token_counts.min() != per_token_counts.max()  # k on average, not per token
    torch.testing.assert_close(out.x_hat, acts @ sae.W_dec.detach() + sae.b_dec.detach())
    assert out.fired.tolist() == (acts > 0).any(0).tolist()


@pytest.mark.parametrize("skewed", [False, True])
def test_batch_topk_selection_is_exact(skewed: bool) -> None:
    pre = torch.randn(32, D_SAE, generator=torch.Generator().manual_seed(0)).relu()
    if skewed:
        pre[3] += 100.0  # one token owns more than its candidates: the full top-k fallback runs
    values, flat = batch_topk(pre, K * 32)
    reference = pre.flatten().topk(K * 32)
    assert sorted(flat.tolist()) == sorted(reference.indices.tolist())
    torch.testing.assert_close(values.sort().values, reference.values.sort().values)
    torch.testing.assert_close(pre.flatten()[flat], values)


def test_batchtopk_threshold_ema_moves_toward_min_selected_activation() -> None:
    opts = SAETrainingOptions(topk_threshold_lr=0.1)
    sae: BatchTopKTrainingSAE = create_training_sae(make_cfg("batchtopk"), opts, torch.Generator().manual_seed(0))  # type: ignore[assignment]
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(4))
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu().detach()
    target = float(pre.flatten().topk(K * 32).values.min())
    assert float(sae.topk_threshold) == 0.0
    gaps = []
    for _ in range(20):
        with torch.no_grad():
            sae.training_forward(x, dead_mask=None, step_frac=0.0)
        gaps.append(abs(target - float(sae.topk_threshold)))
    assert float(sae.topk_threshold) == pytest.approx(target * (1 - 0.9**20), rel=1e-5)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert sae.topk_threshold.dtype == torch.float64 and "topk_threshold" in sae.state_dict()


def test_batchtopk_to_inference_is_jumprelu_with_the_scalar_threshold() -> None:
    sae = randomised_training_sae("batchtopk")
    inference = sae.to_inference(2.0)
    assert isinstance(inference, JumpReLUSAE) and inference.cfg.architecture == "jumprelu"
    torch.testing.assert_close(inference.threshold, torch.full((D_SAE,), 0.15))
    assert inference.cfg.k == K and inference.cfg.metadata["training_architecture"] == "batchtopk"


# JumpReLU -----------------------------------------------------------------------------------


def test_jumprelu_pseudo_derivatives() -> None:
    bw = 0.1
    pre = torch.tensor([[0.0, 0.46, 0.52, 0.7], [0.2, 0.48, 0.56, 0.9]], requires_grad=True)
    threshold = torch.full((4,), 0.5, requires_grad=True)
    out = JumpReLUFunction.apply(pre, threshold, bw)
    torch.testing.assert_close(out.detach(), pre.detach() * (pre.detach() > 0.5))
    out.sum().backward()
    torch.testing.assert_close(pre.grad, (pre.detach() > 0.5).float())
    in_window = ((pre.detach() - 0.5).abs() < bw / 2).float()
    torch.testing.assert_close(threshold.grad, -(0.5 / bw) * in_window.sum(0))

    threshold.grad = None
    step = StepFunction.apply(pre, threshold, bw)
    torch.testing.assert_close(step.detach(), (pre.detach() > 0.5).float())
    step.sum().backward()
    torch.testing.assert_close(threshold.grad, -(1 / bw) * in_window.sum(0))


def test_jumprelu_threshold_stays_non_negative() -> None:
    sae = create_training_sae(make_cfg("jumprelu"), SAETrainingOptions(), torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.threshold.fill_(-0.2)
    sae.after_optimizer_step()
    assert float(sae.threshold.detach().min()) == 0.0


@pytest.mark.parametrize("arch,key,option", [("jumprelu", "l0", "l0_warmup_frac"), ("standard", "l1", "l1_warmup_frac")])
def test_sparsity_coefficient_warms_up_linearly(arch: str, key: str, option: str) -> None:
    sae = randomised_training_sae(arch)
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = float(sae.training_forward(x, dead_mask=None, step_frac=0.9).losses[key])
        half = float(sae.training_forward(x, dead_mask=None, step_frac=getattr(sae.train_cfg, option) / 2).losses[key])
        zero = float(sae.training_forward(x, dead_mask=None, step_frac=0.0).losses[key])
    assert full > 0 and zero == 0.0 and half == pytest.approx(full / 2, rel=1e-5)


# Folding the activation scale -------------------------------------------------------------


def expected_acts(sae, arch: str, pre: torch.Tensor) -> torch.Tensor:
    if arch == "topk":
        return dense_topk(pre, K)
    if arch == "jumprelu":
        return pre.relu() * (pre > sae.threshold)
    if arch == "batchtopk":
        return pre.relu() * (pre > float(sae.topk_threshold))
    return pre.relu()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_to_inference_folds_the_activation_scale(arch: str) -> None:
    sae = randomised_training_sae(arch)
    scale = 3.7
    x = torch.randn(50, D_IN, generator=torch.Generator().manual_seed(8)) * 0.4
    x_n = scale * x
    inference = sae.to_inference(scale)
    with torch.no_grad():
        pre_n = (x_n - sae.b_dec) @ sae.W_enc + sae.b_enc
        acts_n = expected_acts(sae, arch, pre_n)
        assert (acts_n > 0).any() and (acts_n == 0).any()
        torch.testing.assert_close(inference.encode(x) * scale, acts_n, rtol=1e-5, atol=1e-5)
        x_hat_n = acts_n @ sae.W_dec + sae.b_dec
        torch.testing.assert_close(inference(x) * scale, x_hat_n, rtol=1e-5, atol=1e-5)
        if arch != "batchtopk":  # BatchTopK's training selection is batch-wide, not a threshold
            out = sae.training_forward(x_n, dead_mask=None, step_frac=1.0)
            torch.testing.assert_close(inference(x), out.x_hat / scale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inference.W_dec.norm(dim=1), torch.ones(D_SAE))
    assert inference.cfg.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.architecture == arch  # the training config is not modified


# Configuration errors ----------------------------------------------------------------------


def test_config_and_option_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown SAE architecture 'gated'"):
        create_training_sae(SAEConfig("gated", 8, 16), SAETrainingOptions())
    with pytest.raises(UserError, match="needs k"):
        SAEConfig("topk", 8, 16)
    with pytest.raises(UserError, match="d_sae must be a positive integer"):
        SAEConfig("standard", 8, 0)
    with pytest.raises(UserError, match="b_dec_init"):
        SAETrainingOptions(b_dec_init="median")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="l0_warmup_frac"):
        SAETrainingOptions(l0_warmup_frac=2.0)
    assert isinstance(sae_from_state(make_cfg("topk"), random_tensors(make_cfg("topk"))), TopKSAE)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("select_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_selection_keeps_exact_values_and_gradients(arch: str, select_dtype: torch.dtype) -> None:
    """--sae-dtype: the latents are picked by a bf16/fp16 matmul, but values, losses and gradients are float32's."""
    opts = SAETrainingOptions(auxk_alpha=0.25, auxk_k=6)
    cfg = make_cfg(arch, d_in=128, d_sae=160, k=5)
    sae = create_training_sae(cfg, opts, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    # each token is built from 5 latents' encoder rows, so the top 5 stand far above the rest in any precision
    picks = torch.stack([torch.randperm(160, generator=g)[:5] for _ in range(40)])
    x = sae.W_enc_T.detach()[picks].sum(1) * 3 + torch.randn(40, 128, generator=g) * 0.05
    exact = create_training_sae(cfg, opts)
    exact.load_state_dict(sae.state_dict())
    sae.select_dtype = select_dtype

    out = sae.training_forward(x, dead_mask=None, step_frac=0.5)
    sum(out.losses.values()).backward()
    want = exact.training_forward(x, dead_mask=None, step_frac=0.5)
    sum(want.losses.values()).backward()
    torch.testing.assert_close(out.x_hat, want.x_hat, rtol=1e-5, atol=1e-5)
    for name in want.losses:
        torch.testing.assert_close(out.losses[name], want.losses[name], rtol=1e-5, atol=1e-6)
    for (name, mine), ref in zip(sae.named_parameters(), exact.parameters()):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")

    # on ordinary data the picks may differ near ties, but every picked value is the exact float32 one
    y = torch.randn(64, 128, generator=g)
    dead = torch.randperm(160, generator=g)[:40]
    values, indices, aux_values, aux_indices = FusedTopKEncoder.apply(
        y, sae.W_enc, sae.b_enc, sae.b_dec, 5, dead, 6, 16, None, select_dtype
    )
    pre = (y - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(values, pre.gather(1, indices).relu(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux_values, pre.gather(1, aux_indices).relu(), rtol=1e-5, atol=1e-6)
    assert set(aux_indices.flatten().tolist()) <= set(dead.tolist())
    overlap = sum(len(set(a) & set(b)) for a, b in zip(indices.tolist(), pre.topk(5, dim=1).indices.tolist()))
    assert overlap >= 0.9 * indices.numel()


def test_low_precision_selection_is_refused_for_dense_architectures(tiny_model_dir, tiny_corpus, tmp_path) -> None:
    from sae_core.training import TrainConfig
    from sae_core.training.trainer import validate

    with pytest.raises(UserError, match="topk and batchtopk only"):
        validate(TrainConfig(arch="jumprelu", sae_dtype="bfloat16"), 64)
    with pytest.raises(UserError, match="--sae-dtype"):
        validate(TrainConfig(sae_dtype="int8"), 64)

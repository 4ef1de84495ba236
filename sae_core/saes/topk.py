"""TopK SAE (Gao et al. 2024, as in sparsify): keep the k largest ReLU pre-activations of each token.

Training never forms a dense `(N, d_sae)` gradient or decodes densely: the fused encoder's backward
and the decoder touch only the selected latents (`embedding_bag`, sparse matmul, `index_add`).
AuxK lets latents that have died model the residual. The sparse pieces are shared with BatchTopK.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SAE, SAEConfig, SAETrainingOptions, TrainingSAE, TrainOutput


class TopKSAE(SAE):
    """Inference TopK SAE: `acts = relu(topk(pre_acts))`, zeros elsewhere (= SAELens TopKSAE = sparsify)."""

    architecture = "topk"

    def activation(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)  # type: ignore[arg-type]
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def encode_topk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(..., d_in) -> (values, indices)`, each `(..., k)`: the sparse form of `encode` (values may be 0)."""
        values, indices = self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)  # type: ignore[arg-type]
        return values.relu(), indices


class SparseActs(NamedTuple):
    """Latent activations of N tokens in sparse form, grouped by token (row-major COO)."""

    values: Tensor
    """(nnz,) activation values (>= 0; zeros are selected-but-inactive)."""
    latents: Tensor
    """(nnz,) latent index of each value."""
    tokens: Tensor
    """(nnz,) token index of each value, non-decreasing."""
    offsets: Tensor
    """(N,) start of each token's run in `values` (what `embedding_bag` calls offsets)."""


def _sparse_linear_grads(
    ctx: Any, grad_values: Tensor, x: Tensor, W_enc: Tensor, latents: Tensor, tokens: Tensor, offsets: Tensor, values: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of selected `relu((x @ W_enc + b_enc)[tokens, latents])` w.r.t. x, W_enc, b_enc.

    x: (N, d_in), W_enc: (d_in, d_sae); latents, tokens, grad_values: (nnz,). Cost O(nnz · d_in).
    """
    g = grad_values * (values > 0)  # ReLU
    grad_x = grad_W = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = F.embedding_bag(latents, W_enc.T.contiguous(), offsets, mode="sum", per_sample_weights=g)
    if ctx.needs_input_grad[1]:
        coo = torch.sparse_coo_tensor(
            torch.stack([latents, tokens]), g, (W_enc.shape[1], x.shape[0]), check_invariants=False
        )
        grad_W = torch.sparse.mm(coo, x).T
    if ctx.needs_input_grad[2]:
        grad_b = torch.zeros(W_enc.shape[1], dtype=g.dtype, device=g.device).index_add_(0, latents, g)
    return grad_x, grad_W, grad_b


class FusedTopKEncoder(torch.autograd.Function):
    """Forward: linear + ReLU + per-token top-k. Backward touches only the k selected latents of each token."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """x: (N, d_in), W_enc: (d_in, d_sae), b_enc: (d_sae,) -> values (N, k), indices (N, k), pre_acts (N, d_sae)."""
        pre_acts = torch.addmm(b_enc, x, W_enc).relu_()
        values, indices = pre_acts.topk(k, dim=-1, sorted=False)
        ctx.save_for_backward(x, W_enc, indices, values)
        ctx.mark_non_differentiable(indices, pre_acts)
        ctx.set_materialize_grads(False)  # no (N, d_sae) zero gradient for pre_acts
        return values, indices, pre_acts

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        if grad_values is None:
            return None, None, None, None
        x, W_enc, indices, values = ctx.saved_tensors
        n, k = indices.shape
        tokens = torch.arange(n, device=x.device).repeat_interleave(k)
        offsets = torch.arange(0, n * k, k, device=x.device)
        grads = _sparse_linear_grads(
            ctx, grad_values.flatten(), x, W_enc, indices.flatten(), tokens, offsets, values.flatten()
        )
        return (*grads, None)


class GatherPreActs(torch.autograd.Function):
    """Selected ReLU pre-activations (computed before, without grad) as a differentiable function of x, W_enc, b_enc."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, latents: Tensor, tokens: Tensor, offsets: Tensor, values: Tensor
    ) -> Tensor:
        """x: (N, d_in), W_enc: (d_in, d_sae), b_enc: (d_sae,); latents/tokens/values (nnz,) -> values (nnz,)."""
        ctx.save_for_backward(x, W_enc, latents, tokens, offsets, values)
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor) -> tuple[Tensor | None, ...]:
        x, W_enc, latents, tokens, offsets, values = ctx.saved_tensors
        return (*_sparse_linear_grads(ctx, grad_values, x, W_enc, latents, tokens, offsets, values), None, None, None, None)


class SparseDecode(torch.autograd.Function):
    """`embedding_bag` decoding whose W_dec gradient is a sparse matmul (PyTorch's own backward sorts, slowly)."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, W_dec: Tensor, latents: Tensor, tokens: Tensor, offsets: Tensor) -> Tensor:
        """values, latents, tokens: (nnz,), W_dec: (d_sae, d_in), offsets: (N,) -> (N, d_in)."""
        ctx.save_for_backward(values, W_dec, latents, tokens, offsets)
        return F.embedding_bag(latents, W_dec, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, W_dec, latents, tokens, offsets = ctx.saved_tensors
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            # d/dvalues[j] = W_dec[latents[j]] · grad[tokens[j]]: PyTorch's per-sample-weight backward does just that
            with torch.enable_grad():
                weights = values.detach().requires_grad_(True)
                out = F.embedding_bag(latents, W_dec.detach(), offsets, mode="sum", per_sample_weights=weights)
            (grad_values,) = torch.autograd.grad(out, weights, grad)
        if ctx.needs_input_grad[1]:
            coo = torch.sparse_coo_tensor(
                torch.stack([latents, tokens]), values, (W_dec.shape[0], grad.shape[0]), check_invariants=False
            )
            grad_W = torch.sparse.mm(coo, grad)
        return grad_values, grad_W, None, None, None


def sparse_decode(acts: SparseActs, W_dec: Tensor) -> Tensor:
    """`(N, d_in)` sum of each token's selected decoder rows weighted by its values (no b_dec); never dense."""
    return SparseDecode.apply(acts.values, W_dec, acts.latents, acts.tokens, acts.offsets)


def per_token(values: Tensor, indices: Tensor) -> SparseActs:
    """`SparseActs` from per-token `(N, k)` values and indices."""
    n, k = indices.shape
    tokens = torch.arange(n, device=indices.device).repeat_interleave(k)
    return SparseActs(values.flatten(), indices.flatten(), tokens, torch.arange(0, n * k, k, device=indices.device))


def fired_and_l0(acts: SparseActs, d_sae: int, n_tokens: int) -> tuple[Tensor, Tensor]:
    """(d_sae,) bool of latents active on some token, and the mean number of active latents per token."""
    active = acts.values.detach() > 0
    fired = torch.zeros(d_sae, dtype=torch.bool, device=active.device)
    fired[acts.latents[active]] = True
    return fired, active.sum() / n_tokens


def auxk_loss(
    sae: TrainingSAE, sae_in: Tensor, pre_acts: Tensor, residual: Tensor, dead_mask: Tensor | None, total_variance: Tensor
) -> Tensor:
    """AuxK (Gao et al. 2024): the top `auxk_k` dead latents of each token reconstruct the residual `x - x_hat`.

    sae_in: (N, d_in) = x - b_dec; pre_acts: (N, d_sae) ReLU pre-activations (no grad); residual: (N, d_in), detached.
    Returns `min(num_dead / auxk_k, 1) * ||e_hat - e||² / total_variance`, unweighted; 0 without dead latents.
    Its gradient reaches only the dead latents' encoder columns, biases and decoder rows (and b_dec).
    """
    num_dead = 0 if dead_mask is None else int(dead_mask.sum())
    if num_dead == 0:
        return sae_in.new_zeros(())
    auxk_k = sae.train_cfg.auxk_k or sae.cfg.d_in // 2
    k_aux = min(auxk_k, num_dead)
    dead = dead_mask.nonzero().squeeze(1)  # type: ignore[union-attr]
    with torch.no_grad():
        values, j = pre_acts.index_select(1, dead).topk(k_aux, dim=-1, sorted=False)
    acts = per_token(values, dead[j])
    differentiable = GatherPreActs.apply(sae_in, sae.W_enc, sae.b_enc, acts.latents, acts.tokens, acts.offsets, acts.values)
    e_hat = sparse_decode(acts._replace(values=differentiable), sae.W_dec)
    return min(num_dead / auxk_k, 1.0) * (e_hat - residual).pow(2).sum() / total_variance


def sparse_losses(sae: TrainingSAE, x: Tensor, sae_in: Tensor, pre_acts: Tensor, acts: SparseActs, dead_mask: Tensor | None) -> TrainOutput:
    """Decode sparse `acts`, then FVU + weighted AuxK (the losses of TopK and BatchTopK)."""
    x_hat = sparse_decode(acts, sae.W_dec) + sae.b_dec
    total_variance = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fvu = (x - x_hat).pow(2).sum() / total_variance
    aux = auxk_loss(sae, sae_in, pre_acts, (x - x_hat).detach(), dead_mask, total_variance)
    fired, l0 = fired_and_l0(acts, sae.cfg.d_sae, x.shape[0])
    return TrainOutput(x_hat, {"fvu": fvu, "auxk": sae.train_cfg.auxk_alpha * aux}, fired, l0)


class TopKTrainingSAE(TrainingSAE):
    """TopK SAE in training: fused sparse encoder, sparse decoder, FVU + AuxK losses."""

    inference_cls = TopKSAE

    def __init__(self, cfg: SAEConfig, train_cfg: SAETrainingOptions, generator: torch.Generator | None = None):
        super().__init__(cfg, train_cfg, generator)
        self.k: int = cfg.k  # type: ignore[assignment]

    def training_forward(self, x: Tensor, *, dead_mask: Tensor | None, step_frac: float) -> TrainOutput:
        sae_in = x - self.b_dec
        values, indices, pre_acts = FusedTopKEncoder.apply(sae_in, self.W_enc, self.b_enc, self.k)
        return sparse_losses(self, x, sae_in, pre_acts, per_token(values, indices), dead_mask)


__all__ = [
    "FusedTopKEncoder",
    "GatherPreActs",
    "SparseActs",
    "TopKSAE",
    "TopKTrainingSAE",
    "auxk_loss",
    "sparse_decode",
]

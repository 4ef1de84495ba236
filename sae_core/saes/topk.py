"""TopK SAE (Gao et al. 2024, as in sparsify): keep the k largest ReLU pre-activations of each token.

Training never forms a dense `(N, d_sae)` tensor beyond one block of pre-activations: the fused
encoder computes `relu(x W + b)` a block of rows at a time and keeps only each row's top k (and,
when latents have died, the top `k_aux` dead ones for AuxK); its backward and the decoder touch only
the selected latents (see `sparse_ops`). The plain dense version of these losses is in `reference`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import SAE, SAEConfig, SAETrainingOptions, TrainingSAE, TrainOutput
from .cpu_matmul import encoder_block
from .sparse_ops import (
    SparseActs,
    exact_pre_acts,
    fired_and_l0,
    gather_pre_acts,
    per_token,
    selected_linear_grads,
    sparse_decode,
    topk_rows,
)

CPU_BLOCK_ROWS = 1024
"""Rows of pre-activations per block on CPU: big enough for an efficient matmul, small enough to stay in cache."""
GPU_BLOCK_BYTES = 1 << 30
"""Largest block of pre-activations on a GPU (one block for the usual batch sizes)."""


class TopKSAE(SAE):
    """Inference TopK SAE: `acts = relu(topk(pre_acts))`, zeros elsewhere (= SAELens TopKSAE = sparsify)."""

    architecture = "topk"

    def activation(self, pre: Tensor) -> Tensor:
        values, indices = topk_rows(pre.contiguous(), self.cfg.k)  # type: ignore[arg-type]
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def encode_topk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(..., d_in) -> (values, indices)`, each `(..., k)`: the sparse form of `encode` (values may be 0)."""
        values, indices = topk_rows(self.pre_acts(x).contiguous(), self.cfg.k)  # type: ignore[arg-type]
        return values.relu(), indices


def block_rows(n: int, d_sae: int, device: torch.device) -> int:
    """How many rows of `(n, d_sae)` pre-activations the fused encoder computes at once."""
    if device.type == "cpu":
        return max(1, min(n, CPU_BLOCK_ROWS))
    return max(1, min(n, GPU_BLOCK_BYTES // (4 * d_sae)))


class FusedTopKEncoder(torch.autograd.Function):
    """Blocked linear + ReLU + per-token top-k (+ top-k of the dead latents). Backward touches only the selected latents."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, dead: Tensor | None, k_aux: int, rows: int,
        buffer: Tensor | None = None, select_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (N, d_in); W_enc: (d_in, d_sae); b_enc: (d_sae,); b_dec: (d_in,); dead: indices of dead latents or None.

        Returns values, indices (N, k) of `relu((x - b_dec) @ W_enc + b_enc)` and the top `k_aux` among the dead
        latents, aux_values, aux_indices (N, k_aux) (no gradient: AuxK re-gathers them), `rows` rows at a time,
        written into `buffer` (`(>= rows, d_sae)`, reused across steps to spare the allocation) when given.
        With `select_dtype` (bf16/fp16) the matmul that chooses the latents runs in that precision and
        the chosen values are then recomputed exactly in float32 (`exact_pre_acts`).
        """
        n = x.shape[0]
        sae_in = x - b_dec
        exact = sae_in, W_enc, b_enc
        if select_dtype is not None:
            sae_in, W_enc, b_enc = (t.to(select_dtype) for t in exact)
        # (in the selection precision: with select_dtype, values are recomputed exactly below)
        values, indices = sae_in.new_empty(n, k), torch.empty(n, k, dtype=torch.long, device=x.device)
        n_aux = k_aux if dead is not None else 0
        aux_values, aux_indices = sae_in.new_empty(n, n_aux), torch.empty(n, n_aux, dtype=torch.long, device=x.device)
        if buffer is None or buffer.shape[0] < min(rows, n) or buffer.shape[1] != W_enc.shape[1] or buffer.dtype != sae_in.dtype:
            buffer = sae_in.new_empty(min(rows, n), W_enc.shape[1])
        for start in range(0, n, rows):
            end = min(n, start + rows)
            pre = encoder_block(b_enc, sae_in[start:end], W_enc, buffer[: end - start])
            # top-k before the ReLU: the same values once ReLU'd (a row with fewer than k positive
            # pre-activations selects zeros either way, which carry no value and no gradient)
            values[start:end], indices[start:end] = topk_rows(pre, k)
            if dead is not None:
                top, j = pre.index_select(1, dead).topk(k_aux, dim=1, sorted=False)
                aux_values[start:end], aux_indices[start:end] = top.relu_(), dead[j]
        if select_dtype is not None:
            values = exact_pre_acts(*exact, per_token(values, indices)).view(n, k)
            if dead is not None:
                aux_values = exact_pre_acts(*exact, per_token(aux_values, aux_indices)).view(n, n_aux).relu_()
            W_enc = exact[1]
        values.relu_()
        ctx.save_for_backward(x, W_enc, b_dec, values, indices)
        ctx.mark_non_differentiable(indices, aux_values, aux_indices)
        ctx.set_materialize_grads(False)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        if grad_values is None:
            return (None,) * 10
        x, W_enc, b_dec, values, indices = ctx.saved_tensors
        acts = per_token(values, indices)
        g = grad_values.flatten() * (acts.values > 0)  # ReLU
        grads = selected_linear_grads(ctx.needs_input_grad[:4], g, x, W_enc, b_dec, acts)
        return (*grads, None, None, None, None, None, None)


INIT_SCALE_ROWS = 8192
"""Rows of the initialisation sample used to fit the encoder's scale."""


@torch.no_grad()
def fit_encoder_scale(sae: TrainingSAE, x: Tensor) -> float:
    """Scale the tied encoder so the initial TopK reconstruction of `x` is least-squares best; returns the factor.

    With b_enc = 0 the top-k selection does not depend on the encoder's scale, so one scalar sets how large
    the first activations are. The unit-norm tied init overshoots (several correlated latents each take a
    token's full projection): fitted factors are 0.6-0.7 on SmolLM2 residuals and on synthetic data, and
    training from them reaches a lower FVU (benchmarks/README.md, train_vs_peers.py).
    """
    source, target = sae.cfg.split_rows(x[:INIT_SCALE_ROWS].to(sae.W_dec))
    rows = block_rows(source.shape[0], sae.cfg.d_sae, source.device)
    values, indices, _, _ = FusedTopKEncoder.apply(source, sae.W_enc, sae.b_enc, sae.encoder_offset, sae.cfg.k, None, 0, rows)
    recon = sparse_decode(per_token(values, indices), sae.W_dec)
    scale = float((target - sae.b_dec).mul(recon).sum() / recon.pow(2).sum().clamp_min(1e-12))
    if not 0 < scale < float("inf"):
        return 1.0  # degenerate sample (e.g. all rows equal to b_dec): keep the tied init
    sae.W_enc_T.mul_(scale)
    return scale


def dead_latents(sae: TrainingSAE, dead_mask: Tensor | None) -> tuple[Tensor | None, int]:
    """Indices of the dead latents (None if there are none) and how many of them AuxK uses per token."""
    if dead_mask is None:
        return None, 0
    dead = dead_mask.nonzero().squeeze(1)
    if dead.numel() == 0:
        return None, 0
    auxk_k = sae.train_cfg.resolved_auxk_k(sae.cfg.d_in)
    return dead, min(auxk_k, dead.numel())


def auxk_loss(sae: TrainingSAE, x: Tensor, aux: SparseActs | None, num_dead: int, residual: Tensor, total_variance: Tensor) -> Tensor:
    """AuxK (Gao et al. 2024): each token's top `auxk_k` dead latents reconstruct the residual `target - x_hat`.

    x: the encoder's input; aux: the selected dead latents with their ReLU pre-activations (no grad); residual:
    (N, out_dim), detached.
    Returns `min(num_dead / auxk_k, 1) * ||e_hat - e||² / total_variance`, unweighted; 0 without dead latents.
    Its gradient reaches only the dead latents' encoder columns, biases and decoder rows (and b_dec).
    """
    if aux is None:
        return x.new_zeros(())
    auxk_k = sae.train_cfg.resolved_auxk_k(sae.cfg.d_in)
    e_hat = sparse_decode(gather_pre_acts(x, sae.W_enc, sae.b_enc, sae.encoder_offset, aux), sae.W_dec)
    return min(num_dead / auxk_k, 1.0) * (e_hat - residual).pow(2).sum() / total_variance


def sparse_losses(
    sae: TrainingSAE, x: Tensor, acts: SparseActs, aux: SparseActs | None, num_dead: int, target: Tensor | None = None
) -> TrainOutput:
    """Decode sparse `acts`, then FVU + weighted AuxK (the losses of TopK and BatchTopK); `x` is the encoder's input
    and `target` what the decoder reconstructs (x itself unless this is a transcoder)."""
    target = x if target is None else target
    x_hat = sparse_decode(acts, sae.W_dec) + sae.b_dec
    # the whole batch's variance: in data-parallel training each rank's FVU term is its rows' share
    total_variance = sae.batch.sum((target - sae.batch.mean_rows(target)).pow(2).sum()).clamp_min(1e-12)
    fvu = (target - x_hat).pow(2).sum() / total_variance
    aux_loss = auxk_loss(sae, x, aux, num_dead, (target - x_hat).detach(), total_variance)
    fired, l0 = fired_and_l0(acts, sae.cfg.d_sae, x.shape[0])
    return TrainOutput(x_hat, {"fvu": fvu, "auxk": sae.train_cfg.auxk_alpha * aux_loss}, fired, l0)


class TopKTrainingSAE(TrainingSAE):
    """TopK SAE in training: fused blocked sparse encoder, sparse decoder, FVU + AuxK losses."""

    inference_cls = TopKSAE

    def __init__(self, cfg: SAEConfig, train_cfg: SAETrainingOptions, generator: torch.Generator | None = None):
        super().__init__(cfg, train_cfg, generator)
        self.k: int = cfg.k  # type: ignore[assignment]
        self.block_rows: int | None = None
        """Rows of pre-activations per block; None chooses by device (`block_rows`)."""
        self._block: Tensor | None = None  # the encoder's pre-activation buffer, kept between steps

    def init_from_data(self, x: Tensor) -> None:
        """b_dec from the sample (per `b_dec_init`), then the encoder's scale fitted to it (`fit_encoder_scale`)."""
        super().init_from_data(x)
        fit_encoder_scale(self, x)

    def training_forward(self, x: Tensor, *, dead_mask: Tensor | None, step_frac: float) -> TrainOutput:
        x, target = self.cfg.split_rows(x)
        dead, k_aux = dead_latents(self, dead_mask)
        rows = self.block_rows or block_rows(x.shape[0], self.cfg.d_sae, x.device)
        dtype = self.select_dtype or x.dtype
        if self._block is None or self._block.device != x.device or self._block.dtype != dtype:
            self._block = x.new_empty(rows, self.cfg.d_sae, dtype=dtype)
        values, indices, aux_values, aux_indices = FusedTopKEncoder.apply(
            x, self.W_enc, self.b_enc, self.encoder_offset, self.k, dead, k_aux, rows, self._block, self.select_dtype
        )
        aux = per_token(aux_values, aux_indices) if dead is not None else None
        return sparse_losses(self, x, per_token(values, indices), aux, 0 if dead is None else dead.numel(), target)


__all__ = [
    "FusedTopKEncoder", "TopKSAE", "TopKTrainingSAE", "auxk_loss", "block_rows", "dead_latents", "fit_encoder_scale", "sparse_losses",
]

"""BatchTopK SAE (Bussmann et al. 2024, as SAELens): keep the k·N largest activations of a whole batch.

The number of active latents varies per token (k on average). An EMA of the smallest selected
activation becomes one scalar threshold, so the trained SAE runs as a JumpReLU SAE at inference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SAE, SAEConfig, SAETrainingOptions, TrainingSAE, TrainOutput
from .jumprelu import JumpReLUSAE
from .sparse_ops import SparseActs, exact_pre_acts, gather_pre_acts, per_token, topk_rows
from .topk import dead_latents, fit_encoder_scale, sparse_losses


def batch_topk(pre: Tensor, total: int, candidates_per_row: int | None = None) -> tuple[Tensor, Tensor]:
    """The `total` largest entries of `pre (N, d_sae)`: values and flat indices `(total,)`, unsorted.

    Selects among each row's top `candidates_per_row` (default 4 · total / N) first, several times faster
    than one top-k over all N · d_sae entries. Exact: when no row gives up all its candidates, every
    entry left out is <= a rejected candidate of its row; otherwise it falls back to the full top-k.
    """
    n, d_sae = pre.shape
    m = min(d_sae, candidates_per_row or 4 * -(-total // n))
    if m < d_sae:
        values, indices = topk_rows(pre, m)
        top, j = values.flatten().topk(total, sorted=False)
        rows = torch.div(j, m, rounding_mode="floor")
        if int(torch.bincount(rows, minlength=n).max()) < m:
            return top, rows * d_sae + indices.flatten()[j]
    return pre.flatten().topk(total, sorted=False)


class BatchTopKTrainingSAE(TrainingSAE):
    """BatchTopK SAE in training: batch-wide top-k·N selection, sparse decoder, FVU + AuxK losses."""

    inference_cls = JumpReLUSAE
    topk_threshold: Tensor

    def __init__(self, cfg: SAEConfig, train_cfg: SAETrainingOptions, generator: torch.Generator | None = None):
        super().__init__(cfg, train_cfg, generator)
        # float64: EMA steps of lr · (small difference) vanish in float32
        self.register_buffer("topk_threshold", torch.zeros((), dtype=torch.float64))

    def init_from_data(self, x: Tensor) -> None:
        """b_dec from the sample, then the encoder's scale fitted to its per-token top-k reconstruction."""
        super().init_from_data(x)
        fit_encoder_scale(self, x)

    def training_forward(self, x: Tensor, *, dead_mask: Tensor | None, step_frac: float) -> TrainOutput:
        n, d_sae = x.shape[0], self.cfg.d_sae
        dead, k_aux = dead_latents(self, dead_mask)
        with torch.no_grad():
            centred = x - self.b_dec
            sae_in, W_enc, b_enc = centred, self.W_enc, self.b_enc
            if self.select_dtype is not None:  # choose in low precision; exact values below
                sae_in, W_enc, b_enc = (t.to(self.select_dtype) for t in (sae_in, W_enc, b_enc))
            pre_acts = torch.addmm(b_enc, sae_in, W_enc).relu_()
            total = self.cfg.k * self.batch.rows(n)  # type: ignore[operator]
            values, flat = batch_topk(pre_acts, min(total, n * d_sae))
            threshold = self.batch.kth_largest(values, total)
            if threshold is not None:  # data parallel: this rank's entries among the whole batch's top
                keep = values >= threshold
                values, flat = values[keep], flat[keep]
            flat, order = torch.sort(flat, stable=True)
            values = values[order]
            tokens = torch.div(flat, d_sae, rounding_mode="floor")
            latents = flat - tokens * d_sae
            counts = torch.bincount(tokens, minlength=n)
            offsets = counts.cumsum(0) - counts
            if self.select_dtype is not None:
                values = exact_pre_acts(centred, self.W_enc, self.b_enc, SparseActs(values, latents, tokens, offsets)).relu_()
            self.update_threshold(values)
            aux = None
            if dead is not None:
                aux_values, j = pre_acts.index_select(1, dead).topk(k_aux, dim=1, sorted=False)
                aux = per_token(aux_values.to(x.dtype), dead[j])
                if self.select_dtype is not None:
                    aux = aux._replace(values=exact_pre_acts(centred, self.W_enc, self.b_enc, aux).relu_())
        acts = gather_pre_acts(x, self.W_enc, self.b_enc, self.b_dec, SparseActs(values, latents, tokens, offsets))
        return sparse_losses(self, x, acts, aux, 0 if dead is None else dead.numel())

    @torch.no_grad()
    def update_threshold(self, values: Tensor) -> None:
        """Move the threshold toward the smallest positive selected activation by `topk_threshold_lr`."""
        positive = values[values > 0]
        smallest = self.batch.min(positive.min() if positive.numel() else values.new_tensor(float("inf")))
        if torch.isfinite(smallest):
            lr = self.train_cfg.topk_threshold_lr
            self.topk_threshold.mul_(1 - lr).add_(lr * smallest.double())

    def to_inference(self, scale: float, scale_out: float | None = None) -> SAE:
        """A JumpReLU SAE whose every threshold is the learned scalar (the SAELens convention)."""
        threshold = torch.full((self.cfg.d_sae,), float(self.topk_threshold), device=self.W_dec.device)
        return self._build_inference(JumpReLUSAE, self.cfg, scale, {"threshold": threshold}, scale_out)

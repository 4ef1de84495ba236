"""Plain dense PyTorch versions of the TopK and BatchTopK training losses: the ground truth.

Tests hold the fast sparse paths (`topk`, `batchtopk`, `sparse_ops`) to these, loss for loss and
gradient for gradient, and the trainer benchmark runs them as its "plain PyTorch" baseline. They
materialise `(N, d_sae)` activations and let autograd do everything, as a textbook SAE would.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import TrainingSAE


def reference_losses(sae: TrainingSAE, x: Tensor, dead_mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """`(x_hat, {"fvu", "auxk"}, fired)` of a TopK or BatchTopK training SAE on `x (N, d_in)`, computed densely.

    Same definitions as the fast path: FVU = ||x - x_hat||² / ||x - mean(x)||²; AuxK = each token's top
    `auxk_k` dead latents (by ReLU pre-activation) reconstruct the detached residual, scaled by
    min(num_dead / auxk_k, 1) and weighted by `auxk_alpha`. `fired`: (d_sae,) latents active on some token.
    """
    n, k = x.shape[0], sae.cfg.k
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    if sae.cfg.architecture == "batchtopk":
        flat = pre.detach().flatten().topk(k * n).indices  # type: ignore[operator]
        mask = torch.zeros(pre.numel(), dtype=torch.bool, device=x.device)
        mask[flat] = True
        acts = pre * mask.view_as(pre)
    else:
        indices = pre.detach().topk(k, dim=-1).indices  # type: ignore[arg-type]
        acts = pre * torch.zeros_like(pre, dtype=torch.bool).scatter(1, indices, True)
    x_hat = acts @ sae.W_dec + sae.b_dec
    total_variance = (x - x.mean(0)).pow(2).sum()
    fvu = (x - x_hat).pow(2).sum() / total_variance
    auxk = x.new_zeros(())
    num_dead = 0 if dead_mask is None else int(dead_mask.sum())
    if num_dead:
        auxk_k = sae.train_cfg.resolved_auxk_k(sae.cfg.d_in)
        dead_pre = pre.masked_fill(~dead_mask, -1.0)  # type: ignore[operator]  # below every ReLU output
        indices = dead_pre.detach().topk(min(auxk_k, num_dead), dim=-1).indices
        aux_acts = pre * torch.zeros_like(pre, dtype=torch.bool).scatter(1, indices, True)
        e_hat = aux_acts @ sae.W_dec
        residual = (x - x_hat).detach()
        auxk = min(num_dead / auxk_k, 1.0) * (e_hat - residual).pow(2).sum() / total_variance
    fired = (acts.detach() > 0).any(0)
    return x_hat, {"fvu": fvu, "auxk": sae.train_cfg.auxk_alpha * auxk}, fired

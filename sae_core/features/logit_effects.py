"""Logit effects of features: what each decoder direction does to the next-token logits.

`W_dec[f] @ W_U`, taken through the final norm's learned scale (and the mean subtraction of a
LayerNorm): the direct effect of adding the feature to the last residual stream, ignoring the
norm's per-token 1/RMS factor, which scales all logits of a token alike.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..model.layout import ModelLayout


class LogitEffects(NamedTuple):
    """The strongest positive and negative logit effects of each feature."""

    top_ids: Tensor
    """(d_sae, n) token ids with the largest effect, strongest first."""
    top_values: Tensor
    """(d_sae, n) their effects."""
    bottom_ids: Tensor
    """(d_sae, n) token ids with the most negative effect, most negative first."""
    bottom_values: Tensor
    """(d_sae, n) their effects."""


def through_final_norm(directions: Tensor, norm: nn.Module) -> Tensor:
    """Apply the final norm's per-dimension scale (Gemma's RMSNorm scales by 1 + weight) to `(n, d)` rows."""
    if isinstance(norm, nn.LayerNorm):
        directions = directions - directions.mean(-1, keepdim=True)
    weight = getattr(norm, "weight", None)
    if weight is None:
        return directions
    weight = weight.detach().float().to(directions.device)
    if type(norm).__name__.startswith("Gemma"):
        weight = 1.0 + weight
    return directions * weight


@torch.no_grad()
def logit_effects(W_dec: Tensor, layout: ModelLayout, n: int = 10, block: int = 1024) -> LogitEffects:
    """Top and bottom `n` logit effects of each row of `W_dec (d_sae, d_model)`, in blocks of `block` features."""
    W_U = layout.unembed.weight.detach().float()
    W_dec = W_dec.float().to(W_U.device)
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, W_dec.shape[0], block):
        effects = through_final_norm(W_dec[start : start + block], layout.final_norm) @ W_U.T
        top = effects.topk(n, dim=-1)
        bottom = effects.topk(n, dim=-1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return LogitEffects(*(torch.cat(p).cpu() for p in zip(*parts)))

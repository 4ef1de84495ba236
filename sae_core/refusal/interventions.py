"""The edits the refusal study makes to one site's activation (per row, see `generation.row_edits`):
steer along a direction, or ablate features or a direction.

Every direction is unit-norm, so a strength α means the same added norm for an SAE feature's decoder
row, a combination of several, or the difference-of-means direction (the matched-norm comparison).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..saes import SAE
from .generation import RowEdit


def unit(v: Tensor) -> Tensor:
    """`v` scaled to norm 1."""
    return v / v.norm().clamp_min(1e-12)


def features_direction(sae: SAE, features: Sequence[int], weights: Sequence[float] | None = None) -> Tensor:
    """The unit direction of some features together: their decoder rows summed with `weights` (e.g. each
    feature's difference of mean activation, which makes it the SAE's reconstruction of that difference)."""
    rows = sae.W_dec.detach()[list(features)].float()
    w = torch.tensor(list(weights) if weights is not None else [1.0] * len(rows), dtype=rows.dtype, device=rows.device)
    return unit((w[:, None] * rows).sum(0)).cpu()


def add(direction: Tensor, alpha: float) -> RowEdit:
    """Add `alpha`·direction at every position."""
    delta = alpha * direction.detach().float()
    return lambda x: x + delta.to(x.device, x.dtype)


def ablate_features(sae: SAE, features: Sequence[int]) -> RowEdit:
    """Clamp the features' activations to zero at every position: subtract each one's a_f·W_dec[f], keeping
    the SAE's error term (the rest of the activation is untouched)."""
    index = torch.tensor(list(features), device=sae.W_dec.device)

    def fn(x: Tensor) -> Tensor:
        acts = sae.encode(x.to(sae.W_dec.dtype))[..., index]
        return x - (acts @ sae.W_dec[index]).to(x.dtype)

    return fn


def ablate_direction(direction: Tensor) -> RowEdit:
    """Project the direction out at every position: x − (x·r̂) r̂."""
    r = unit(direction.float())

    def fn(x: Tensor) -> Tensor:
        u = r.to(x.device, x.dtype)
        return x - (x @ u)[..., None] * u

    return fn

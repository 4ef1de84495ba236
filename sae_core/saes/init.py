"""Initialisation helpers shared by every architecture: unit-norm random decoders and b_dec from data."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserError

B_DEC_INITS = ("geometric_median", "mean", "zeros")


def random_unit_rows(n_rows: int, d: int, generator: torch.Generator | None) -> Tensor:
    """A `(n_rows, d)` float32 matrix whose rows are uniform on the unit sphere (deterministic given `generator`)."""
    w = torch.randn(n_rows, d, generator=generator, dtype=torch.float32)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def geometric_median(x: Tensor, *, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """The point minimising the summed distance to the rows of `x (N, d)`, by Weiszfeld iterations; returns `(d,)`.

    More robust than the mean to the heavy-tailed activation norms of LMs (Bricken et al. 2023 init b_dec with it).
    """
    xd = x.detach().double()
    sq = xd.pow(2).sum(1)
    y = xd.mean(0)
    for _ in range(max_iter):
        # |x - y|² = |x|² - 2 x·y + |y|²: two matrix-vector products per step, no (N, d) temporaries
        dist = (sq - 2 * (xd @ y) + y.dot(y)).clamp_min(0).sqrt()
        w = 1.0 / dist.clamp_min(1e-12)
        y_next = (w @ xd) / w.sum()
        moved = float((y_next - y).norm())
        y = y_next
        if moved <= tol * max(float(y.norm()), 1e-12):
            break
    return y.to(x.dtype)


def b_dec_from_data(x: Tensor, how: str) -> Tensor:
    """The initial decoder bias `(d_in,)` from a sample `x (N, d_in)`: its geometric median, its mean, or zeros."""
    if how == "zeros":
        return torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
    if x.ndim != 2 or x.shape[0] == 0:
        raise UserError(f"b_dec initialisation needs a non-empty (N, d_in) sample of activations, got shape {tuple(x.shape)}")
    if how == "mean":
        return x.mean(0)
    if how == "geometric_median":
        return geometric_median(x)
    raise UserError(f"unknown b_dec initialisation {how!r}: use one of {', '.join(B_DEC_INITS)}")

"""The one outlier rule: a token whose activation norm exceeds `factor` × the median norm (attention sinks beyond
position 0) is left out of training, evaluation and feature statistics. The threshold is set at training time and
stored with each SAE (`metadata.outlier_norm_threshold`), so every later stage applies the same one."""

from __future__ import annotations

import torch
from torch import Tensor

METADATA_KEY = "outlier_norm_threshold"


def threshold_from_norms(norms: Tensor, factor: float) -> float | None:
    """`factor` × the median of `norms`; None (keep every token) when `factor` is 0 or less."""
    return factor * float(norms.median()) if factor > 0 else None


def within(norms: Tensor, threshold: float | None) -> Tensor:
    """`norms.shape` bool: norms within the threshold (all of them when there is none)."""
    if threshold is None:
        return torch.ones(norms.shape, dtype=torch.bool, device=norms.device)
    return norms <= threshold


def non_outliers(x: Tensor, threshold: float | None) -> Tensor:
    """`(...)` bool: activations `x (..., d)` whose norm is within the threshold (all of them when there is none)."""
    if threshold is None:
        return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)  # no norms to compute
    return within(x.norm(dim=-1), threshold)


def outlier_threshold(sae) -> float | None:
    """The threshold recorded with an SAE at training time, if any."""
    value = sae.cfg.metadata.get(METADATA_KEY)
    return float(value) if value is not None else None

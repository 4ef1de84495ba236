"""Per-feature statistics of one SAE, computed exactly from its recorded sparse activations.

Everything is a vectorised sort / bincount over the non-zero activations, so the cost grows
with their number (tokens × L0), not with tokens × d_sae.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .record import SparseActivations


@dataclass(frozen=True)
class FeatureStats:
    """Firing statistics of every feature of one SAE over the counted tokens."""

    n_tokens: int
    """Tokens that count (real text, not outliers): the density denominator."""
    fires: Tensor
    """(d_sae,) int64 number of counted tokens where the feature is > 0."""
    max_act: Tensor
    """(d_sae,) float32 maximum activation (0 for dead features)."""
    mean_act: Tensor
    """(d_sae,) float32 mean activation over the tokens where the feature fires (0 for dead)."""
    hist_counts: Tensor
    """(d_sae, n_bins) int64: firings in equal bins of (0, max_act]; row sums equal `fires`."""

    @property
    def density(self) -> Tensor:
        return self.fires.double() / max(self.n_tokens, 1)


def feature_stats(acts: SparseActivations, d_sae: int, n_bins: int = 50) -> FeatureStats:
    """Density, max / mean activation and an `n_bins`-bin histogram of every feature."""
    f, v = acts.latents, acts.values
    fires = torch.bincount(f, minlength=d_sae)
    sums = torch.bincount(f, weights=v.double(), minlength=d_sae)
    max_act = torch.zeros(d_sae).scatter_reduce(0, f, v, reduce="amax", include_self=True)
    mean_act = torch.where(fires > 0, sums / fires.clamp_min(1), 0.0).float()
    top = max_act[f]
    bins = (v / top * n_bins).long().clamp_(0, n_bins - 1)
    hist = torch.bincount(f * n_bins + bins, minlength=d_sae * n_bins).view(d_sae, n_bins)
    return FeatureStats(int(acts.counted.sum()), fires, max_act, mean_act, hist)


@dataclass(frozen=True)
class Examples:
    """Selected example tokens of many features: one row per example, with its window's activations."""

    features: Tensor
    """(n,) feature index."""
    kinds: Tensor
    """(n,) 0 for a top example, j ≥ 1 for a sample from quantile interval j."""
    ranks: Tensor
    """(n,) order within (feature, kind): 0 is the strongest top example / first sample."""
    contexts: Tensor
    """(n,) context index."""
    positions: Tensor
    """(n,) position of the example's token in its context (the maximum, for top examples)."""
    activations: Tensor
    """(n,) the feature's activation at that token."""
    starts: Tensor
    """(n,) first position of the window in the context."""
    windows: Tensor
    """(n, 2W+1) activations of the feature over the window; positions past the context end are NaN."""


def _group_rank(keys: Tensor) -> Tensor:
    """For a sorted key tensor, each element's index within its run of equal keys."""
    n = keys.numel()
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = keys[1:] != keys[:-1]
    idx = torch.arange(n)
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(0).values
    return idx - first


def lexsort(*keys: Tensor, descending: tuple[bool, ...] = ()) -> Tensor:
    """Permutation sorting by `keys[0]`, then `keys[1]`, …; `descending[i]` flips key i. Stable."""
    flags = descending + (False,) * (len(keys) - len(descending))
    order = torch.arange(keys[0].numel())
    for key, desc in reversed(list(zip(keys, flags))):
        order = order[torch.sort(key[order], descending=desc, stable=True).indices]
    return order


def top_examples(acts: SparseActivations, n_top: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The `n_top` contexts with the highest maximum of each feature: `(features, ranks, tokens, values)`.

    A context counts once per feature, at the token of its maximum (the first one on ties).
    """
    T = acts.counted.shape[1]
    n_ctx = acts.counted.shape[0]
    f, t, v = acts.latents, acts.tokens, acts.values
    ctx = t // T
    group = f * n_ctx + ctx
    # Per (feature, context): the entry with the largest value, the earliest token on ties.
    order = lexsort(group, v, t, descending=(False, True, False))
    best = order[_group_rank(group[order]) == 0]
    # Per feature: the n_top best contexts by value.
    best = best[lexsort(f[best], v[best], t[best], descending=(False, True, False))]
    rank = _group_rank(f[best])
    keep = rank < n_top
    return f[best][keep], rank[keep], t[best][keep], v[best][keep]


def interval_samples(
    acts: SparseActivations, fires: Tensor, n_intervals: int, per_interval: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Random firing tokens from each quantile interval of each feature's activations.

    Interval j (1-based) holds the firings whose rank by value, among the feature's firings, falls in
    the j-th of `n_intervals` equal parts (j = n_intervals is the strongest). Returns
    `(features, intervals, ranks, tokens, values)`, up to `per_interval` samples per (feature, interval).
    """
    f, t, v = acts.latents, acts.tokens, acts.values
    order = lexsort(f, v, t)
    f, t, v = f[order], t[order], v[order]
    rank = _group_rank(f)
    interval = rank * n_intervals // fires[f] + 1
    group = f * (n_intervals + 1) + interval
    priority = torch.rand(f.numel(), generator=generator)
    order = lexsort(group, priority)
    sample_rank = _group_rank(group[order])
    keep = order[sample_rank < per_interval]
    return f[keep], interval[keep], sample_rank[sample_rank < per_interval], t[keep], v[keep]


def windows(acts: SparseActivations, features: Tensor, tokens: Tensor, half_width: int) -> tuple[Tensor, Tensor]:
    """Each example's window of ±`half_width` tokens, clipped to its context: `(starts, (n, 2W+1) activations)`.

    The window is shifted (not shrunk) at the edges of a context where the context is long enough;
    slots beyond a short context are NaN.
    """
    T = acts.counted.shape[1]
    width = 2 * half_width + 1
    ctx, pos = tokens // T, tokens % T
    starts = (pos - half_width).clamp(min=0)
    starts = torch.minimum(starts, torch.full_like(starts, max(T - width, 0)))
    offsets = torch.arange(width)
    positions = starts[:, None] + offsets[None, :]
    inside = positions < T
    n_total = acts.counted.numel()
    key = acts.latents * n_total + acts.tokens
    sorted_keys, order = torch.sort(key)
    query = features[:, None] * n_total + (ctx[:, None] * T + positions.clamp(max=T - 1))
    where = torch.searchsorted(sorted_keys, query).clamp(max=max(sorted_keys.numel() - 1, 0))
    found = sorted_keys[where] == query if sorted_keys.numel() else torch.zeros_like(query, dtype=torch.bool)
    values = torch.where(found, acts.values[order][where] if sorted_keys.numel() else 0.0, 0.0)
    values = torch.where(inside, values, float("nan"))
    return starts, values


def select_examples(
    acts: SparseActivations,
    fires: Tensor,
    *,
    n_top: int,
    n_intervals: int,
    per_interval: int,
    half_width: int,
    seed: int = 0,
) -> Examples:
    """Top examples and quantile-interval samples of every feature, with their windows."""
    tf, tr, tt, tv = top_examples(acts, n_top)
    generator = torch.Generator().manual_seed(seed)
    sf, si, sr, st, sv = interval_samples(acts, fires, n_intervals, per_interval, generator)
    features = torch.cat([tf, sf])
    kinds = torch.cat([torch.zeros_like(tf), si])
    ranks = torch.cat([tr, sr])
    tokens = torch.cat([tt, st])
    values = torch.cat([tv, sv])
    order = lexsort(features, kinds, ranks)
    features, kinds, ranks, tokens, values = (x[order] for x in (features, kinds, ranks, tokens, values))
    starts, window_values = windows(acts, features, tokens, half_width)
    T = acts.counted.shape[1]
    return Examples(features, kinds, ranks, tokens // T, tokens % T, values, starts, window_values)

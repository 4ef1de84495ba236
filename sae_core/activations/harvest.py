"""Harvest: one LM forward pass feeds every site; activations of real tokens, gathered in chunks.

The forward pass stops after the deepest site it needs (see `hooks.run_to_sites`), and only
real tokens (not position 0, not special tokens, not padding) are kept. A transcoder site's rows are
its input and its target side by side, `(…, 2 · d_model)` (`site_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..model.hooks import run_to_sites
from ..model.load import LoadedModel
from ..model.sites import Site
from ..text.tokens import TokenBatch
from .outliers import non_outliers, threshold_from_norms, within


class Chunk(NamedTuple):
    """Activations of the real tokens of several LM batches, per site."""

    acts: dict[Site, Tensor]
    """`{site: (n_real, width)}` float32 rows, in token order (`site_rows`: a transcoder's are 2 · d_model wide)."""

    lm_batches: int
    """How many LM batches (of `lm_batch_size` contexts) went into this chunk."""

    tokens: int
    """Real tokens in the chunk (rows per site before any filtering)."""

    batch_rows: list[int] | None = None
    """Data-parallel chunks only: rows of each LM batch of the chunk; `acts` then holds just this rank's
    batches (every world-th, see `parallel.sharded_harvest`), which the trainer exchanges step by step."""


def sites_to_capture(sites: Iterable[Site]) -> list[Site]:
    """The activations `sites` need: each site, and a transcoder's target (the MLP output) beside it."""
    return list(dict.fromkeys(t for s in sites for t in (s, s.target)))


def site_rows(site: Site, acts: dict[Site, Tensor]) -> Tensor:
    """A site's rows from captured activations: the activation, or a transcoder's input and target side by side."""
    if site.is_transcoder:
        return torch.cat([acts[site], acts[site.target]], dim=-1)
    return acts[site]


def batch_activations(loaded: LoadedModel, sites: list[Site], batch: TokenBatch) -> dict[Site, Tensor]:
    """Run one token batch to the deepest site; return `{site: (B, T, width)}` rows (`site_rows`)."""
    device = loaded.device
    acts = run_to_sites(
        loaded.model,
        batch.input_ids.to(device),
        batch.attention_mask.to(device),
        sites=sites_to_capture(sites),
        layout=loaded.layout,
    )
    return {site: site_rows(site, acts) for site in sites}


def harvest_chunks(
    loaded: LoadedModel, sites: list[Site], batches: Iterable[TokenBatch], chunk_tokens: int
) -> Iterator[Chunk]:
    """Group LM batches into chunks of at least `chunk_tokens` real tokens, with every site's rows."""
    parts: dict[Site, list[Tensor]] = {s: [] for s in sites}
    n_batches = n_tokens = 0
    for batch in batches:
        acts = batch_activations(loaded, sites, batch)
        real = batch.real.to(next(iter(acts.values())).device)
        for site in sites:
            parts[site].append(acts[site][real].float())
        n_batches += 1
        n_tokens += int(real.sum())
        if n_tokens >= chunk_tokens:
            yield Chunk({s: torch.cat(parts[s]) for s in sites}, n_batches, n_tokens)
            parts = {s: [] for s in sites}
            n_batches = n_tokens = 0
    if n_batches:
        yield Chunk({s: torch.cat(parts[s]) for s in sites}, n_batches, n_tokens)


@dataclass(frozen=True)
class SiteStats:
    """Per-site activation statistics, estimated once, that training and evaluation share."""

    mean_norm: float
    """Mean L2 norm of (non-outlier) real-token activations."""

    median_norm: float
    """Median L2 norm of real-token activations."""

    outlier_threshold: float | None
    """Norm above which a token counts as an outlier (attention sink); None keeps all."""

    scale: float
    """Training multiplies activations by this so their mean norm is sqrt(d_in)."""

    scale_out: float | None = None
    """A transcoder's: what its target columns are multiplied by (mean norm sqrt(d_out)); None for an SAE."""

    target_from: int | None = None
    """A transcoder's: the column where the target starts in its rows (d_in); None for an SAE."""

    @classmethod
    def estimate(cls, x: Tensor, outlier_factor: float, normalize: bool, target_from: int | None = None) -> SiteStats:
        """Estimate from a sample `x (N, d)` of real-token rows. A transcoder's rows (input, then its target from
        column `target_from`) share one outlier threshold on the whole row; each side gets its own scale."""
        norms = x.norm(dim=-1)
        median = float(norms.median())
        threshold = threshold_from_norms(norms, outlier_factor)
        keep = within(norms, threshold)
        mean = float(norms[keep].mean())  # the norms are already there: not computed twice
        if target_from is None:
            return cls(mean, median, threshold, (x.shape[-1] ** 0.5) / mean if normalize else 1.0)
        source, target = x[keep, :target_from], x[keep, target_from:]
        scales = [(part.shape[-1] ** 0.5) / float(part.norm(dim=-1).mean().clamp_min(1e-12)) if normalize else 1.0
                  for part in (source, target)]
        return cls(mean, median, threshold, scales[0], scales[1], target_from)

    def keep_mask(self, x: Tensor) -> Tensor:
        """`(N,)` bool: rows whose norm is within the outlier threshold."""
        return non_outliers(x, self.outlier_threshold)

    def scale_(self, rows: Tensor) -> Tensor:
        """Scale rows `(N, width)` in place for training (a transcoder's input and target each by its own scale)."""
        if self.target_from is None or self.scale_out is None:
            return rows.mul_(self.scale)
        rows[:, : self.target_from].mul_(self.scale)
        rows[:, self.target_from :].mul_(self.scale_out)
        return rows

    def to_dict(self) -> dict[str, float | None]:
        out = {
            "mean_norm": self.mean_norm,
            "median_norm": self.median_norm,
            "outlier_threshold": self.outlier_threshold,
            "scale": self.scale,
        }
        if self.target_from is not None:
            out.update(scale_out=self.scale_out, target_from=self.target_from)
        return out

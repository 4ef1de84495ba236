"""Nearest features: by decoder-direction cosine (exact, blocked) and by co-activation on the same tokens."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .record import SparseActivations


class Neighbours(NamedTuple):
    """The `n` nearest features of each feature (padded with -1 where there are fewer)."""

    ids: Tensor
    """(d_sae, n) neighbour feature ids, nearest first; -1 = none."""
    scores: Tensor
    """(d_sae, n) cosine similarity, or Jaccard index of the firing sets; NaN where id is -1."""
    counts: Tensor | None
    """(d_sae, n) tokens on which both fire (co-activation only)."""


@torch.no_grad()
def decoder_cosine_neighbours(W_dec: Tensor, n: int = 10, block: int = 2048) -> Neighbours:
    """Exact top-`n` cosine neighbours of each decoder row, never holding more than `block × d_sae` scores."""
    d_sae = W_dec.shape[0]
    unit = torch.nn.functional.normalize(W_dec.float(), dim=-1)
    k = min(n, d_sae - 1)
    ids, scores = [], []
    for start in range(0, d_sae, block):
        sims = unit[start : start + block] @ unit.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -float("inf")  # not its own neighbour
        top = sims.topk(k, dim=-1)
        ids.append(top.indices)
        scores.append(top.values)
    return _pad(torch.cat(ids), torch.cat(scores), None, n)


def coactivation_neighbours(acts: SparseActivations, d_sae: int, n: int = 10, max_block_elements: int = 2**24) -> Neighbours:
    """Top-`n` features by Jaccard index of the sets of tokens they fire on (|A∩B| / |A∪B|).

    Jaccard rather than the raw count, so that features that fire everywhere do not top every list;
    the count of shared tokens is kept alongside. Counts come from a sparse `Aᵀ A`, computed for a
    block of rows at a time that is made dense (at most `max_block_elements` entries) for a top-k.
    """
    tokens = acts.tokens.numpy()
    _, token_rows = np.unique(tokens, return_inverse=True)
    A = sp.csr_matrix(
        (np.ones(tokens.size), (token_rows, acts.latents.numpy())),  # float64: exact counts
        shape=(int(token_rows.max()) + 1 if tokens.size else 0, d_sae),
    )
    At = A.T.tocsr()
    fires = torch.from_numpy(np.asarray(A.sum(0)).ravel())
    k = min(n, d_sae - 1)
    block = max(1, min(d_sae, max_block_elements // max(d_sae, 1)))
    ids, scores, counts = [], [], []
    for start in range(0, d_sae, block):
        both = torch.from_numpy((At[start : start + block] @ A).toarray())  # (b, d_sae) shared-token counts
        rows = torch.arange(both.shape[0])
        both[rows, rows + start] = 0  # not its own neighbour
        jaccard = both / (fires[start : start + block, None] + fires[None, :] - both).clamp_min(1)
        jaccard[both == 0] = -1.0  # never fire together: not a neighbour
        top = jaccard.topk(k, dim=-1)  # sorted: the -1 (none) entries come last
        found = top.values > 0
        ids.append(torch.where(found, top.indices, -1))
        scores.append(torch.where(found, top.values, float("nan")).float())
        counts.append(torch.where(found, both.gather(1, top.indices), 0).long())
    return _pad(torch.cat(ids), torch.cat(scores), torch.cat(counts), n)


def _pad(ids: Tensor, scores: Tensor, counts: Tensor | None, n: int) -> Neighbours:
    """Pad `(d_sae, k)` results to `n` columns with -1 / NaN (a dictionary with fewer than n+1 features)."""
    missing = n - ids.shape[1]
    if missing > 0:
        ids = torch.cat([ids, torch.full((ids.shape[0], missing), -1, dtype=ids.dtype)], 1)
        scores = torch.cat([scores, torch.full((scores.shape[0], missing), float("nan"))], 1)
        if counts is not None:
            counts = torch.cat([counts, torch.zeros((counts.shape[0], missing), dtype=counts.dtype)], 1)
    return Neighbours(ids, scores, counts)

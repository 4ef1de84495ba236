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


def coactivation_neighbours(acts: SparseActivations, d_sae: int, n: int = 10, block: int = 1024) -> Neighbours:
    """Top-`n` features by Jaccard index of the sets of tokens they fire on (|A∩B| / |A∪B|).

    Jaccard rather than the raw count, so that features that fire everywhere do not top every list;
    the count of shared tokens is kept alongside. Computed as a sparse `Aᵀ A` in row blocks.
    """
    tokens = acts.tokens.numpy()
    _, token_rows = np.unique(tokens, return_inverse=True)
    A = sp.csr_matrix(
        (np.ones(tokens.size, dtype=np.float32), (token_rows, acts.latents.numpy())),
        shape=(int(token_rows.max()) + 1 if tokens.size else 0, d_sae),
    )
    At = A.T.tocsr()
    fires = np.asarray(A.sum(0)).ravel()
    out_ids = np.full((d_sae, n), -1, dtype=np.int64)
    out_scores = np.full((d_sae, n), np.nan, dtype=np.float32)
    out_counts = np.zeros((d_sae, n), dtype=np.int64)
    for start in range(0, d_sae, block):
        C = (At[start : start + block] @ A).tocoo()
        row, col, count = C.row, C.col, C.data
        other = row + start != col
        row, col, count = row[other], col[other], count[other]
        jaccard = count / (fires[row + start] + fires[col] - count)
        order = np.lexsort((col, -jaccard, row))  # by row, then best score, then lowest id
        row, col, count, jaccard = row[order], col[order], count[order], jaccard[order]
        first = np.r_[0, np.flatnonzero(np.diff(row)) + 1]
        rank = np.arange(row.size) - np.repeat(first, np.diff(np.r_[first, row.size]))
        keep = rank < n
        r, c = row[keep] + start, rank[keep]
        out_ids[r, c], out_scores[r, c], out_counts[r, c] = col[keep], jaccard[keep], count[keep]
    return Neighbours(torch.from_numpy(out_ids), torch.from_numpy(out_scores), torch.from_numpy(out_counts))


def _pad(ids: Tensor, scores: Tensor, counts: Tensor | None, n: int) -> Neighbours:
    """Pad `(d_sae, k)` results to `n` columns with -1 / NaN (a dictionary with fewer than n+1 features)."""
    missing = n - ids.shape[1]
    if missing > 0:
        ids = torch.cat([ids, torch.full((ids.shape[0], missing), -1, dtype=ids.dtype)], 1)
        scores = torch.cat([scores, torch.full((scores.shape[0], missing), float("nan"))], 1)
    return Neighbours(ids, scores, counts)

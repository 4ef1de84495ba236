"""Feature vectors stored as int8 and searched in memory or memory-mapped: exactly, or through an ANN index.

Each unit vector v is stored as `scale × q` with q int8 (scale = max|v| / 127), the query likewise, so a
cosine is one int8 dot product times two scales (off by less than 0.01). Rows are scored with int8 matrix
products (`torch._int_mm`: ~50 ms per million 384-d rows on 2 CPU cores); where that kernel is missing,
blocks of rows are converted to float32 instead (several times slower). A feature with several vectors
(its examples, its explanation) scores as the best of them.

Rows are kept in (sae_id, feature, source) order, so one SAE's rows are one slice and one feature's rows
two binary searches away. With an approximate index (`ann`, built by `ann_index`), a search over many
rows asks it for `RERANK ×` the wanted rows and re-scores those exactly: the similarities shown are always
exact, the risk is only a true neighbour the index did not propose (recall in benchmarks/README.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

SOURCES = ("examples", "explanation")
_BLOCK = 262_144
"""Rows scored per int8 matrix product of an exact search."""
_FLOAT_BLOCK = 65_536
"""Rows converted to float32 at a time where the int8 kernel is missing."""
EXACT_MAX_ROWS = 400_000
"""A search over at most this many rows (the whole file, or the SAEs it is restricted to) scores every one
exactly (~20 ms); a larger one goes through the approximate index when there is one."""
RERANK = 16
"""Candidates asked of the approximate index per row a search needs, re-scored exactly."""
PROBED_FRACTION = 4
"""One in this many inverted lists of the approximate index is visited per query (at least 32)."""


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(N, D)` float vectors → `(scales (N,) float32, q (N, D) int8)` with `vectors ≈ scales[:, None] * q`."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    scales = np.abs(vectors).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return scales.astype(np.float32), q


def int8_scores(rows: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """`rows (N, D) int8 @ query (D,) int8` as int32 `(N,)`: one int8 GEMM where torch has it, float32 blocks otherwise."""
    if rows.shape[0] >= 32 and rows.shape[1] % 8 == 0:
        try:
            rhs = torch.zeros(rows.shape[1], 8, dtype=torch.int8)
            rhs[:, 0] = query
            return torch._int_mm(rows, rhs)[:, 0]
        except (RuntimeError, AttributeError, NotImplementedError):
            pass
    q = query.float()
    return torch.cat([(rows[i : i + _FLOAT_BLOCK].float() @ q).round().int() for i in range(0, rows.shape[0], _FLOAT_BLOCK)] or
                     [torch.zeros(0, dtype=torch.int32)])


def feature_keys(sae_ids: np.ndarray, features: np.ndarray) -> np.ndarray:
    """One int64 per row that sorts as `(sae_id, feature)`."""
    return (np.asarray(sae_ids, dtype=np.int64) << 32) | np.asarray(features, dtype=np.int64)


@dataclass
class VectorIndex:
    """Every feature vector of a file: sorted `(sae_id, feature)` keys, sources, int8 rows and their scales
    (numpy arrays or memory maps), and optionally an approximate index over the same rows."""

    keys: np.ndarray
    """`(N,)` int64 `feature_keys`, ascending."""
    sources: np.ndarray
    """Index into `SOURCES` per row."""
    scales: np.ndarray
    vectors: np.ndarray
    """`(N, D)` int8."""
    ann: Any = None
    """A faiss index whose ids are row numbers, or None (every search exact)."""

    @classmethod
    def from_arrays(cls, sae_ids: np.ndarray, features: np.ndarray, sources: np.ndarray, scales: np.ndarray,
                    vectors: np.ndarray) -> VectorIndex:
        """An in-memory index of rows given in (sae_id, feature, source) order."""
        keys = feature_keys(sae_ids, features)
        if len(keys) > 1 and (np.diff(keys) < 0).any():
            raise ValueError("vector rows must come in (sae_id, feature) order")
        return cls(keys, np.asarray(sources, np.int8), np.asarray(scales, np.float32), np.asarray(vectors, np.int8))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    def vectors_of(self, sae_id: int, feature: int) -> dict[str, np.ndarray]:
        """The float vectors of one feature, by source."""
        key = int(feature_keys(sae_id, feature))
        lo, hi = np.searchsorted(self.keys, [key, key + 1])
        return {SOURCES[self.sources[r]]: self.vectors[r].astype(np.float32) * self.scales[r] for r in range(lo, hi)}

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """`(N,)` cosine of every row with `query` (a unit vector)."""
        return self._score(slice(0, len(self)), *_quantized(query))

    def search(self, query: np.ndarray, *, limit: int = 50, sae_ids: list[int] | None = None,
               exclude: tuple[int, int] | None = None) -> pd.DataFrame:
        """The `limit` features most similar to `query` (cosine, best over each feature's vectors): columns
        `sae_id`, `feature`, `similarity`, `matched` (which vector matched best)."""
        empty = pd.DataFrame(columns=["sae_id", "feature", "similarity", "matched"])
        ranges = self._ranges(sae_ids)
        n_rows = sum(hi - lo for lo, hi in ranges)
        if not n_rows:
            return empty
        k = limit * len(SOURCES) + len(SOURCES)  # enough rows for `limit` distinct features, one excluded
        q_scale, q = _quantized(query)
        if self.ann is None or n_rows <= EXACT_MAX_ROWS:
            rows, scores = self._exact(ranges, q_scale, q, k)
        else:
            rows = self._candidates(np.asarray(query, np.float32), ranges, k * RERANK)
            scores = self._score(rows, q_scale, q)
        keys = self.keys[rows]
        frame = pd.DataFrame({"sae_id": (keys >> 32).astype(np.int64), "feature": (keys & 0xFFFFFFFF).astype(np.int64),
                              "similarity": scores, "matched": [SOURCES[s] for s in self.sources[rows]]})
        if exclude is not None:
            frame = frame[(frame.sae_id != exclude[0]) | (frame.feature != exclude[1])]
        frame = frame.sort_values(["similarity", "sae_id", "feature"], ascending=[False, True, True], kind="stable")
        return frame.drop_duplicates(["sae_id", "feature"]).head(limit).reset_index(drop=True)

    def _ranges(self, sae_ids: list[int] | None) -> list[tuple[int, int]]:
        """Row slices of the chosen SAEs (all rows when None)."""
        if not sae_ids:
            return [(0, len(self))]
        wanted = sorted({int(s) for s in sae_ids})
        bounds = np.searchsorted(self.keys, [feature_keys(s + d, 0) for s in wanted for d in (0, 1)])
        return [(int(lo), int(hi)) for lo, hi in bounds.reshape(-1, 2) if hi > lo]

    def _score(self, rows: slice | np.ndarray, q_scale: float, q: np.ndarray) -> np.ndarray:
        """Cosines of some rows (a slice reads a memory map in place; an array of row numbers copies them)."""
        vectors = torch.from_numpy(np.ascontiguousarray(self.vectors[rows] if isinstance(rows, slice) else self._gather(rows)))
        return int8_scores(vectors, torch.from_numpy(q)).numpy().astype(np.float32) * self.scales[rows] * q_scale

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Scattered rows; from a memory-mapped file they are read with `pread`, so the few thousand rows a search
        re-scores stay in the OS page cache instead of adding their pages to the process's resident memory."""
        if not isinstance(self.vectors, np.memmap) or self.vectors.filename is None:
            return self.vectors[rows]
        out = np.empty((len(rows), self.dim), np.int8)
        with open(self.vectors.filename, "rb", buffering=0) as file:
            for i, row in enumerate(rows):
                os.preadv(file.fileno(), [out[i]], self.vectors.offset + int(row) * self.dim)
        return out

    def _exact(self, ranges: list[tuple[int, int]], q_scale: float, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` rows within `ranges`, scoring every row block by block."""
        best_rows, best_scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for lo, hi in ranges:
            for start in range(lo, hi, _BLOCK):
                end = min(hi, start + _BLOCK)
                scores = self._score(slice(start, end), q_scale, q)
                top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
                best_rows.append(start + top)
                best_scores.append(scores[top])
        return np.concatenate(best_rows), np.concatenate(best_scores)

    def _candidates(self, query: np.ndarray, ranges: list[tuple[int, int]], k: int) -> np.ndarray:
        """Row numbers the approximate index proposes within `ranges`."""
        import faiss

        selector = None
        if ranges != [(0, len(self))]:
            mask = np.zeros(len(self), bool)
            for lo, hi in ranges:
                mask[lo:hi] = True
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        params = faiss.SearchParametersIVF(nprobe=max(32, self.ann.nlist // PROBED_FRACTION), sel=selector)
        _, ids = self.ann.search(query.reshape(1, -1) / max(float(np.linalg.norm(query)), 1e-12), k, params=params)
        return np.unique(ids[ids >= 0])


def _quantized(query: np.ndarray) -> tuple[float, np.ndarray]:
    scales, q = quantize(np.asarray(query, dtype=np.float32).reshape(1, -1))
    return float(scales[0]), q[0]

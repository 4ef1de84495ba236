"""Feature vectors stored as int8 and searched exactly in memory.

Each unit vector v is stored as `scale × q` with q int8 (scale = max|v| / 127), the query likewise, so a
cosine is one int8 dot product times two scales (off by less than 0.01). All rows are scored with one
int8 matrix product (`torch._int_mm`: ~50 ms per million 384-d rows on 2 CPU cores, 384 MB of memory);
where that kernel is missing, blocks of rows are converted to float32 instead (several times slower).
A feature with several vectors (its examples, its explanation) scores as the best of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

SOURCES = ("examples", "explanation")
_BLOCK = 65_536


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
    return torch.cat([(rows[i : i + _BLOCK].float() @ q).round().int() for i in range(0, rows.shape[0], _BLOCK)] or
                     [torch.zeros(0, dtype=torch.int32)])


@dataclass
class VectorIndex:
    """Every feature vector of a file: `(sae_id, feature, source)` keys, int8 rows and their scales."""

    sae_ids: np.ndarray
    features: np.ndarray
    sources: np.ndarray
    """Index into `SOURCES` per row."""
    scales: np.ndarray
    vectors: np.ndarray
    """`(N, D)` int8."""
    _rows: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = torch.from_numpy(np.ascontiguousarray(self.vectors, dtype=np.int8))

    def __len__(self) -> int:
        return len(self.sae_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    def vectors_of(self, sae_id: int, feature: int) -> dict[str, np.ndarray]:
        """The float vectors of one feature, by source."""
        rows = np.flatnonzero((self.sae_ids == sae_id) & (self.features == feature))
        return {SOURCES[self.sources[r]]: self.vectors[r].astype(np.float32) * self.scales[r] for r in rows}

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """`(N,)` cosine of every row with `query` (a unit vector)."""
        q_scale, q = quantize(np.asarray(query, dtype=np.float32).reshape(1, -1))
        raw = int8_scores(self._rows, torch.from_numpy(q[0]))
        return raw.numpy().astype(np.float32) * self.scales * q_scale[0]

    def search(self, query: np.ndarray, *, limit: int = 50, sae_ids: list[int] | None = None,
               exclude: tuple[int, int] | None = None) -> pd.DataFrame:
        """The `limit` features most similar to `query` (cosine, best over each feature's vectors): columns
        `sae_id`, `feature`, `similarity`, `matched` (which vector matched best)."""
        if not len(self):
            return pd.DataFrame(columns=["sae_id", "feature", "similarity", "matched"])
        scores = self.similarities(query)
        if sae_ids:
            scores[~np.isin(self.sae_ids, np.asarray(sae_ids))] = -np.inf
        if exclude is not None:
            scores[(self.sae_ids == exclude[0]) & (self.features == exclude[1])] = -np.inf
        k = min(len(scores), limit * len(SOURCES))  # enough rows for `limit` distinct features
        best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        best = best[np.isfinite(scores[best])]
        frame = pd.DataFrame({"sae_id": self.sae_ids[best], "feature": self.features[best], "similarity": scores[best],
                              "matched": [SOURCES[s] for s in self.sources[best]]})
        frame = frame.sort_values(["similarity", "sae_id", "feature"], ascending=[False, True, True], kind="stable")
        return frame.drop_duplicates(["sae_id", "feature"]).head(limit).reset_index(drop=True)

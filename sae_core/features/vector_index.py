"""Feature vectors stored as int8 and searched in memory: a binary first pass, then exact re-ranking.

Each unit vector v is stored as `scale × q` with q int8 (scale = max|v| / 127: a cosine off by < 0.01).
A search scores every row by the Hamming distance between sign bits (48 bytes per 384-d vector, popcounts
over all rows: ~20 ms per million), keeps the best `candidates`, and re-ranks those exactly with the int8
vectors. Below `exact_below` rows every row is scored exactly. A feature with several vectors
(its examples, its explanation) scores as the best of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SOURCES = ("examples", "explanation")


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(N, D)` float vectors → `(scales (N,) float32, q (N, D) int8)` with `vectors ≈ scales[:, None] * q`."""
    vectors = np.asarray(vectors, dtype=np.float32)
    scales = np.abs(vectors).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return scales.astype(np.float32), q


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
    candidates: int = 4096
    exact_below: int = 200_000

    def __post_init__(self) -> None:
        bits = np.packbits(self.vectors > 0, axis=1)
        pad = (-bits.shape[1]) % 8
        self._codes = np.ascontiguousarray(np.pad(bits, ((0, 0), (0, pad)))).view(np.uint64)

    def __len__(self) -> int:
        return len(self.sae_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    def vectors_of(self, sae_id: int, feature: int) -> dict[str, np.ndarray]:
        """The float vectors of one feature, by source."""
        rows = np.flatnonzero((self.sae_ids == sae_id) & (self.features == feature))
        return {SOURCES[self.sources[r]]: self.vectors[r].astype(np.float32) * self.scales[r] for r in rows}

    def search(self, query: np.ndarray, *, limit: int = 50, sae_ids: list[int] | None = None,
               exclude: tuple[int, int] | None = None) -> pd.DataFrame:
        """The `limit` features most similar to `query` (cosine, best over each feature's vectors): columns
        `sae_id`, `feature`, `similarity`, `matched` (which vector matched best)."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        rows = np.arange(len(self))
        if sae_ids:
            rows = rows[np.isin(self.sae_ids, np.asarray(sae_ids))]
        if exclude is not None:
            rows = rows[~((self.sae_ids[rows] == exclude[0]) & (self.features[rows] == exclude[1]))]
        if len(rows) > max(self.exact_below, self.candidates):
            rows = self._first_pass(query, rows)
        scores = (self.vectors[rows].astype(np.float32) @ query) * self.scales[rows]
        frame = pd.DataFrame({"sae_id": self.sae_ids[rows], "feature": self.features[rows], "similarity": scores,
                              "matched": [SOURCES[s] for s in self.sources[rows]]})
        frame = frame.sort_values("similarity", ascending=False, kind="stable").drop_duplicates(["sae_id", "feature"])
        return frame.head(limit).reset_index(drop=True)

    def _first_pass(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The `candidates` rows whose sign bits agree most with the query's."""
        bits = np.packbits(query > 0)
        code = np.pad(bits, (0, (-len(bits)) % 8)).view(np.uint64)
        codes = self._codes if len(rows) == len(self) else self._codes[rows]
        distance = np.bitwise_count(codes ^ code).sum(axis=1, dtype=np.int32)
        best = np.argpartition(distance, self.candidates)[: self.candidates]
        return rows[best]

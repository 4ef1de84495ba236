"""int8 feature vectors and their search, against exact float search."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from sae_core.features.reader import int8_rows
from sae_core.features.vector_index import VectorIndex, int8_scores, quantize


def _unit(rng, n, d):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_quantized_cosines_are_within_a_hundredth():
    rng = np.random.default_rng(0)
    v = _unit(rng, 500, 384)
    scales, q = quantize(v)
    index = VectorIndex.from_arrays(np.zeros(500, int), np.arange(500), np.zeros(500, np.int8), scales, q)
    for query in _unit(rng, 5, 384):
        assert np.abs(index.similarities(query) - v @ query).max() < 0.01


def test_int8_kernel_and_float_fallback_agree():
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(rng.integers(-127, 128, (1000, 384), dtype=np.int8))
    query = torch.from_numpy(rng.integers(-127, 128, 384, dtype=np.int8))
    exact = rows.long() @ query.long()
    assert torch.equal(int8_scores(rows, query).long(), exact)
    assert torch.equal(int8_scores(rows[:, :380].contiguous(), query[:380]).long(), rows[:, :380].long() @ query[:380].long())


def test_search_matches_exact_float_search():
    rng = np.random.default_rng(1)
    v = _unit(rng, 20_000, 384)
    scales, q = quantize(v)
    n = len(v)
    index = VectorIndex.from_arrays(np.arange(n) // 5_000, np.arange(n) % 5_000, np.zeros(n, np.int8), scales, q)
    for query in _unit(rng, 10, 384):
        hits = index.search(query, limit=10)
        exact = v @ query
        best = np.sort(exact)[::-1][:10]
        found = exact[hits.sae_id.to_numpy() * 5_000 + hits.feature.to_numpy()]
        assert np.abs(found - best).max() < 0.01  # the same neighbours, up to int8 rounding of near-ties


def test_a_feature_scores_as_its_best_vector_and_filters_apply():
    rng = np.random.default_rng(2)
    v = _unit(rng, 6, 32)
    scales, q = quantize(v)
    index = VectorIndex.from_arrays(np.array([0, 0, 1, 1, 2, 2]), np.array([5, 5, 7, 7, 9, 9]), np.array([0, 1, 0, 1, 0, 1], np.int8), scales, q)
    hits = index.search(v[3], limit=10)
    assert list(hits.feature)[0] == 7 and hits.matched[0] == "explanation" and len(hits) == 3  # one row per feature
    assert set(index.search(v[3], sae_ids=[0, 2]).feature) == {5, 9}
    assert 7 not in set(index.search(v[3], exclude=(1, 7)).feature)
    assert set(index.vectors_of(1, 7)) == {"examples", "explanation"}
    assert index.search(v[3], limit=1).feature.tolist() == [7]


def test_vectors_load_chunk_by_chunk():
    """Feature vectors arrive in Arrow chunks (sliced ones too) and load as one int8 matrix in row order."""
    rows = np.arange(-60, 60, dtype=np.int8).reshape(30, 4)
    lists = pa.array([list(r) for r in rows], type=pa.list_(pa.int8()))
    column = pa.chunked_array([lists.slice(0, 7), lists.slice(7, 1), lists.slice(8, 22)])
    assert column.num_chunks == 3
    np.testing.assert_array_equal(int8_rows(column, 4), rows)
    assert int8_rows(pa.chunked_array([], type=pa.list_(pa.int8())), 4).shape == (0, 0)

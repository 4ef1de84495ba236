"""The vector index beside a feature file: memory-mapped rows searched exactly, and the IVF-PQ path whose
candidates are re-scored exactly; missing, stale and broken indexes reported and searched around."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from sae_core.features import vector_index
from sae_core.features.amend import amend
from sae_core.features.ann_index import build_vector_index, vectors_path
from sae_core.features.reader import SEARCH_COLUMNS, FeatureStore
from sae_core.testing.synthetic_features import build_synthetic


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """4 SAEs × 1,500 features with 64-d vectors around 256 topics; its vector index has an IVF-PQ part."""
    path = tmp_path_factory.mktemp("ann") / "features.duckdb"
    build_synthetic(path, n_saes=4, d_sae=1_500, vocab_size=500, n_contexts=32, context_size=32, explained_fraction=0.3,
                    vector_dim=64)
    build_vector_index(path, ann_min_rows=0)
    return path


def in_memory(path) -> FeatureStore:
    """A store whose vectors are loaded from the feature file and searched exactly, as without an index."""
    store = FeatureStore(path)
    store.__dict__["_vector_index"] = (store._vector_index_from_file(), "the exact baseline")
    return store


def queries(store: FeatureStore, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    index = store.vector_index
    rows = rng.choice(len(index), n, replace=False)
    noisy = index.vectors[rows].astype(np.float32) * index.scales[rows, None] + rng.normal(0, 0.05, (n, index.dim))
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def test_the_index_maps_the_vectors_and_small_searches_are_exact(db):
    with FeatureStore(db) as mapped, in_memory(db) as exact:
        assert mapped.vector_index_problem is None and isinstance(mapped.vector_index.vectors, np.memmap)
        assert mapped.vector_index.ann is not None and len(mapped.vector_index) == len(exact.vector_index)
        assert mapped.vector_index.vectors_of(2, 7).keys() == exact.vector_index.vectors_of(2, 7).keys()
        for query in queries(exact, 20):  # 9k rows: below EXACT_MAX_ROWS, so every row is scored, as in memory
            for saes in (None, [1, 3]):
                a, b = mapped.search_by_vector(query, saes=saes, limit=20), exact.search_by_vector(query, saes=saes, limit=20)
                assert a[["sae_id", "feature", "similarity", "matched"]].equals(b[["sae_id", "feature", "similarity", "matched"]])


def test_approximate_search_finds_the_exact_neighbours_with_exact_scores(db, monkeypatch):
    monkeypatch.setattr(vector_index, "EXACT_MAX_ROWS", 0)  # every search through IVF-PQ
    with FeatureStore(db) as approximate, in_memory(db) as exact:
        found = wanted = 0
        for query in queries(exact, 40):
            a, b = approximate.search_by_vector(query, limit=10), exact.search_by_vector(query, limit=10)
            scores = dict(zip(zip(b.sae_id, b.feature), b.similarity))
            for key, similarity in zip(zip(a.sae_id, a.feature), a.similarity):
                if key in scores:
                    assert similarity == scores[key]  # re-scored exactly: the same similarity as the exact search
            found += len(set(scores) & set(zip(a.sae_id, a.feature)))
            wanted += len(b)
            assert a.similarity.is_monotonic_decreasing and len(a) == 10
            filtered = approximate.search_by_vector(query, saes=[0, 2], limit=10, exclude=(0, int(a.feature[0])))
            assert set(filtered.sae_id) <= {0, 2} and len(filtered) == 10
            assert (0, int(a.feature[0])) not in set(zip(filtered.sae_id, filtered.feature))
        assert found / wanted >= 0.9, f"recall@10 {found / wanted:.2f}"


def test_similar_features_reads_the_feature_own_vector(db):
    with FeatureStore(db) as store:
        sae_id, feature = int(store.vector_index.keys[100] >> 32), int(store.vector_index.keys[100] & 0xFFFFFFFF)
        similar = store.similar_features(sae_id, feature, limit=5)
        assert len(similar) == 5 and (sae_id, feature) not in set(zip(similar.sae_id, similar.feature))


def test_a_missing_stale_or_broken_index_is_reported_and_searched_around(db, tmp_path):
    copy = tmp_path / "features.duckdb"
    shutil.copy(db, copy)
    with FeatureStore(copy) as store:
        assert "no vector index" in store.vector_index_problem and "sae-explorer index" in store.vector_index_problem
        query = queries(store, 1)[0]
        expected = store.search_by_vector(query, limit=10)
    shutil.copytree(vectors_path(db), vectors_path(copy))
    with amend(copy) as con:  # a writer drops one SAE's vectors; the index is rebuilt after it
        con.execute("DELETE FROM feature_vectors WHERE sae_id = ?", [int(expected.sae_id[0])])
    with FeatureStore(copy) as store:
        assert store.vector_index_problem is None
        assert int(expected.sae_id[0]) not in set(store.search_by_vector(query, limit=10).sae_id)
    shutil.rmtree(vectors_path(copy))
    shutil.copytree(vectors_path(db), vectors_path(copy))  # the index from before that write
    with FeatureStore(copy) as store:
        assert "older than the feature file" in store.vector_index_problem
        assert int(expected.sae_id[0]) not in set(store.search_by_vector(query, limit=10).sae_id)  # loaded, so right
    meta = json.loads((vectors_path(copy) / "meta.json").read_text())
    build_vector_index(copy)
    (vectors_path(copy) / "vectors.npy").write_bytes(b"not an array")
    with FeatureStore(copy) as store:
        assert "cannot read the vector index" in store.vector_index_problem
        assert len(store.vector_index) < meta["rows"]


def test_hits_are_described_alike_through_the_search_index_and_the_file(db):
    """Search by meaning reads each hit's label and explanation by point lookups in the search index; without
    that index, by a join over the feature file: the same rows either way."""
    with FeatureStore(db) as indexed, FeatureStore(db) as joined:
        joined.__dict__["_search_index"] = (None, "no index")
        assert indexed.search_index_problem is None
        for query in queries(indexed, 10):
            a, b = indexed.search_by_vector(query, limit=30), joined.search_by_vector(query, limit=30)
            pd.testing.assert_frame_equal(a, b)
            assert a.explanation.notna().any() and list(a.columns) == SEARCH_COLUMNS

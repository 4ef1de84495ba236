"""The search index answers exactly as the scans it replaces, and is never silently stale."""

from __future__ import annotations

import random
import shutil
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from sae_core.features import search_index
from sae_core.features.amend import amend
from sae_core.features.reader import FeatureStore
from sae_core.features.search_index import build_search_index, index_path
from sae_core.testing.synthetic_features import build_synthetic

HOSTILE = ["'", "%", "_", '"', '""', "\\", "'; DROP TABLE features; --", "→", '" OR 1=1 --', "a%b", "", " ", "  ",
           "NEAR(a b)", "a AND b", "*", "ab*", "^ab", "\x00", "a\x00b", "é", "É", "ÉCOLE", "ß", "İ", "日本語", "🙂", "\n", "⏎"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A small synthetic feature file whose labels and explanations include hostile strings, with its index."""
    path = tmp_path_factory.mktemp("search") / "features.duckdb"
    build_synthetic(path, n_saes=3, d_sae=400, vocab_size=2_000, n_contexts=64, context_size=32, explained_fraction=0.5,
                    vector_dim=16)
    rng = random.Random(0)
    with amend(path) as con:
        features = con.execute("SELECT sae_id, feature FROM features USING SAMPLE 200 ROWS (reservoir, 1)").fetchall()
        for (sae_id, feature), text in zip(features, (h for _ in range(8) for h in HOSTILE)):
            label = f"{text}{rng.choice(['', ' x', 'Ab'])}"
            con.execute("UPDATE features SET label = ?, label_lower = lower(?) WHERE sae_id = ? AND feature = ?",
                        [label, label, sae_id, feature])
            con.execute("UPDATE explanations SET explanation = ?, explanation_lower = ? WHERE sae_id = ? AND feature = ?",
                        [f"tokens like {label}", f"tokens like {label}".lower(), sae_id, feature])
        con.execute("UPDATE features SET max_act = 1.5 WHERE feature % 7 = 0")  # ties, broken by (sae_id, feature)
        con.execute("UPDATE explanations SET detection = NULL WHERE feature % 5 = 0")
    return path


@pytest.fixture(scope="module")
def stores(db):
    """The same file read through its index and by scanning."""
    indexed, scanning = FeatureStore(db), FeatureStore(db)
    assert indexed.search_index_problem is None
    scanning.__dict__["_search_index"] = (None, "scanning on purpose")
    yield indexed, scanning
    indexed.close()
    scanning.close()


def queries(store: FeatureStore, n: int = 60) -> list[str]:
    """Hostile strings, then substrings of real labels and explanations of every length from 0 to 7, in any case."""
    rng = random.Random(1)
    texts = [*store._df("SELECT label FROM features").label, *store._df("SELECT explanation FROM explanations").explanation]
    out = list(HOSTILE)
    for _ in range(n):
        text = rng.choice(texts)
        start, length = rng.randrange(len(text)), rng.randrange(8)
        piece = text[start : start + length]
        out.append(piece.upper() if rng.random() < 0.3 else piece)
    return out + ["zzzzqqq", "qq", "q"]


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal rows, and equal dtypes for numbers (text may come back as object or string dtype)."""
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)
    numbers = [c for c in b if b[c].dtype.kind in "iuf"]
    assert a[numbers].dtypes.equals(b[numbers].dtypes)


@pytest.mark.parametrize("limit", [5, 10_000])
def test_label_and_explanation_search_equal_the_scan(stores, limit):
    indexed, scanning = stores
    for text in queries(scanning):
        for saes in (None, [0, 2]):
            same(indexed.search_label(text, saes=saes, limit=limit), scanning.search_label(text, saes=saes, limit=limit))
            same(indexed.search_explanation(text, saes=saes, limit=limit),
                 scanning.search_explanation(text, saes=saes, limit=limit))
    assert len(indexed.search_label("", limit=limit)) == min(limit, 1_200)


def test_token_search_equals_the_scan(stores):
    indexed, scanning = stores
    rng = random.Random(2)
    tokens = [*rng.sample(scanning.vocab, 60), *HOSTILE, "7", "1999"]
    for token in tokens:
        for saes, limit in ((None, 5), (None, 10_000), ([2], 20)):
            same(indexed.search_token(token, saes=saes, limit=limit), scanning.search_token(token, saes=saes, limit=limit))
    assert not indexed.search_token(rng.choice(scanning.vocab), limit=10_000).empty


def test_both_plans_for_short_strings_equal_the_scan(stores, db, tmp_path, monkeypatch):
    """Rare one- and two-character strings are read from postings, common ones by walking rows in order."""
    monkeypatch.setattr(search_index, "SHORT_GRAM_POSTINGS_MAX", 40)
    copy = tmp_path / "features.duckdb"
    shutil.copy(db, copy)
    shutil.copy(index_path(db), index_path(copy))
    build_search_index(copy)
    _, scanning = stores
    with FeatureStore(copy) as indexed:
        counts = dict(indexed._search_index[0].con.execute("SELECT gram, n FROM short_counts WHERE kind = 'label'").fetchall())
        rare = [g for g, n in counts.items() if n <= 40][:30]
        common = [g for g, n in counts.items() if n > 40][:30]
        assert rare and common
        for text in rare + common:
            same(indexed.search_label(text, limit=50), scanning.search_label(text, limit=50))


def test_a_stale_or_missing_index_is_reported_and_scanned_around(db, tmp_path):
    copy = tmp_path / "features.duckdb"
    shutil.copy(db, copy)
    old_index = tmp_path / "old.sqlite"
    build_search_index(copy)
    shutil.copy(index_path(copy), old_index)
    with FeatureStore(copy) as store:
        assert store.search_index_problem is None
        before = store.search_label("ab", limit=10_000)
    with amend(copy) as con:  # a writer renames a label; the index is rebuilt after it
        sae_id, feature = before.sae_id[0], before.feature[0]
        con.execute("UPDATE features SET label = 'renamed', label_lower = 'renamed' WHERE sae_id = ? AND feature = ?",
                    [int(sae_id), int(feature)])
    with FeatureStore(copy) as store:
        assert store.search_index_problem is None
        assert len(store.search_label("ab", limit=10_000)) == len(before) - 1
        assert len(store.search_label("renamed")) == 1
    shutil.copy(old_index, index_path(copy))  # an index from before that write
    with FeatureStore(copy) as store:
        assert "older than the feature file" in store.search_index_problem
        assert len(store.search_label("renamed")) == 1  # scanned, so still right
    index_path(copy).unlink()
    with FeatureStore(copy) as store:
        assert "no search index" in store.search_index_problem and "sae-explorer index" in store.search_index_problem
        assert len(store.search_label("renamed")) == 1
    index_path(copy).write_bytes(b"not a database")
    with FeatureStore(copy) as store:
        assert "cannot read the search index" in store.search_index_problem


def test_one_store_serves_many_threads(stores):
    """The app shares one store between sessions: concurrent searches answer as serial ones."""
    indexed, _ = stores
    texts = queries(indexed, 20)
    serial = [indexed.search_label(t, limit=20) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda t: indexed.search_label(t, limit=20), texts))
    for a, b in zip(parallel, serial):
        same(a, b)

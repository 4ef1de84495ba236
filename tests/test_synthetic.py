"""The synthetic features.duckdb generator (used by the query benchmark) writes a file the reader fully accepts."""

from sae_core.features.reader import FeatureStore
from sae_core.testing.synthetic_features import build_synthetic


def test_synthetic_file_is_schema_valid_and_complete(tmp_path):
    path = build_synthetic(tmp_path / "synthetic.duckdb", n_saes=3, d_sae=64, vocab_size=300, n_contexts=16, context_size=48)
    with FeatureStore(path) as store:
        assert store.meta["synthetic"] is True
        assert len(store.saes()) == 3 and store._rows("SELECT count(*) FROM features")[0][0] == 3 * 64
        page = store.feature(2, 63)
        assert len(page.examples) == 40 and set(page.examples.kind) == {0, 1, 2, 3, 4, 5}
        for row in page.examples.itertuples():
            assert len(row.tokens) == len(row.acts) == 33
            assert row.acts[row.max_index] == row.activation
        assert {len(v) for v in page.neighbours.values()} == {10}
        assert len(store.layer_summary()) == 3
        assert not store.search_label(page.feature["label"][1:4]).empty or page.feature["dead"]


def test_every_writer_gives_exactly_the_schema_columns(tmp_path):
    """`schema.COLUMNS` is the one list of a table's columns: an insert that misses or invents one is refused."""
    import pytest

    from sae_core.features.schema import COLUMNS, TABLES, check_columns, sae_identity
    from sae_core.features.writer import FeatureDBWriter

    assert "CREATE TABLE site_summary (sae_id INTEGER" in TABLES
    assert list(sae_identity(0, "blocks.0.hook_resid_post", "L0R", 0, "resid_post")) == list(COLUMNS["saes"])[:5]
    check_columns("vocab", ["token", "token_id"])
    with pytest.raises(ValueError, match="rows for vocab: missing token; unknown tok"):
        check_columns("vocab", ["token_id", "tok"])
    with FeatureDBWriter(tmp_path / "f.duckdb", indexes=False) as db:
        with pytest.raises(ValueError, match="rows for contexts: missing token_ids"):
            db.insert("contexts", {"context_id": [0]})
        db.insert("vocab", {"token_id": [0], "token": ["a"]})
        db.finish({})

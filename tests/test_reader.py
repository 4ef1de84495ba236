"""The reader API on a precomputed tiny run: feature pages, searches (hostile strings too), filters, version checks."""

from __future__ import annotations

import json
import random
import shutil

import duckdb
import pytest
from helpers import DEAD_FEATURE, SITES

from sae_core.errors import UserError
from sae_core.features.reader import FeatureNotFound, FeatureStore
from sae_core.features.schema import DB_FILE, SCHEMA_VERSION, FeatureDBError


@pytest.fixture(scope="module")
def store(precomputed_run):
    with FeatureStore(precomputed_run) as s:
        yield s


def test_meta_and_saes(store):
    assert store.meta["schema_version"] == SCHEMA_VERSION
    assert store.meta["tokens"] >= 2_000
    saes = store.saes()
    assert list(saes.short_name) == ["L0R", "L1A", "L1T", "L1M"]  # in forward-pass order: the transcoder reads the MLP input
    assert store.sae_id("L1M") == store.sae_id("blocks.1.hook_mlp_out") == 3
    assert store.sae_id("L1T") == store.sae_id("blocks.1.ln2.hook_normalized") == 2
    with pytest.raises(FeatureNotFound, match="it has L0R, L1A, L1T, L1M"):
        store.sae_id("L9R")


def busiest(store, sae: int) -> int:
    """The feature of SAE `sae` that fires most often."""
    return int(store.list_features(saes=[sae], sort_by="fires", limit=1).feature.iloc[0])


def test_feature_page_holds_everything(store):
    feature = busiest(store, 1)
    page = store.feature("L1A", feature)
    assert page.sae["short_name"] == "L1A"
    assert page.histogram["count"].sum() == page.feature["fires"]
    assert page.histogram["high"].iloc[-1] == pytest.approx(page.feature["max_act"])
    assert len(page.top_logits) == 10 and page.top_logits["value"].is_monotonic_decreasing
    assert page.bottom_logits["value"].is_monotonic_increasing
    top = page.examples[page.examples.kind == 0]
    assert top["activation"].is_monotonic_decreasing
    assert top["activation"].iloc[0] == pytest.approx(page.feature["max_act"])
    for row in page.examples.itertuples():
        assert len(row.tokens) == len(row.acts) == len(row.token_ids)
        assert row.acts[row.max_index] == pytest.approx(row.activation)
        assert row.tokens == [store.vocab[t] for t in row.token_ids]
    assert set(page.neighbours) == {"decoder_cosine", "coactivation"}
    cos = page.neighbours["decoder_cosine"]
    assert len(cos) == 10 and cos["score"].is_monotonic_decreasing and feature not in set(cos.feature)


def test_dead_feature_is_stored_and_marked(store):
    page = store.feature("L0R", DEAD_FEATURE)
    assert page.feature["dead"] and page.feature["fires"] == 0 and page.examples.empty
    assert store.list_features(saes=[0], include_dead=False).feature.tolist().count(DEAD_FEATURE) == 0


def test_unknown_feature_is_a_clear_error(store):
    with pytest.raises(FeatureNotFound, match="L1A has no feature 48; its features are 0 … 47"):
        store.feature("L1A", 48)


def all_labels(store):
    return store._df("SELECT sae_id, feature, label FROM features")


@pytest.mark.parametrize("text", ["'", "%", "_", '"', "\\", "'; DROP TABLE features; --", "→", "\" OR 1=1 --", "a%b", ""])
def test_label_search_treats_the_string_as_data(store, text):
    found = store.search_label(text, limit=10_000)
    labels = all_labels(store)
    expected = labels[labels.label.str.lower().str.contains(text.lower(), regex=False)]
    assert sorted(zip(found.sae_id, found.feature)) == sorted(zip(expected.sae_id, expected.feature))
    assert len(store._df("SELECT * FROM features")) == len(SITES) * 48  # nothing was dropped


def test_label_search_finds_a_real_label(store):
    mlp = store.sae_id("L1M")
    feature = busiest(store, mlp)
    word = store.feature("L1M", feature).feature["label"].split('"')[1]
    found = store.search_label(word.upper(), saes=[mlp], limit=100)
    assert feature in set(found.feature) and set(found.sae_id) == {mlp}


def test_token_search_matches_top_tokens_and_logits(store):
    mlp = store.sae_id("L1M")
    feature = busiest(store, mlp)
    page = store.feature("L1M", feature)
    token = store.vocab[int(page.top_logits.token_id.iloc[0])]
    found = store.search_token(token, limit=10_000)
    assert ((found.sae_id == mlp) & (found.feature == feature)).any()
    features = store._df("SELECT sae_id, feature, top_token_ids, top_logit_ids FROM features")
    ids = set(store.token_ids(token))
    expected = {(s, f) for s, f, a, b in features.itertuples(index=False) if ids & (set(a) | set(b))}
    assert set(zip(found.sae_id, found.feature)) == expected
    assert store.search_token("'; DROP TABLE vocab; --").empty


def test_list_features_filters_and_sorts(store):
    df = store.list_features(sites=["attn_out"], min_density=0.01, max_density=0.5, sort_by="max_act", limit=1000)
    assert set(df.sae) == {"L1A"}
    assert df.density.between(0.01, 0.5).all() and df.max_act.is_monotonic_decreasing
    df = store.list_features(layers=[0], sort_by="density", descending=False, limit=5, offset=2)
    assert set(df.sae) == {"L0R"} and len(df) == 5 and df.density.is_monotonic_increasing
    with pytest.raises(UserError, match="cannot sort by"):
        store.list_features(sort_by="density; DROP TABLE features")


def test_random_feature_is_alive(store):
    rng = random.Random(0)
    for _ in range(20):
        sae_id, feature = store.random_feature("L0R", rng)
        assert sae_id == 0 and feature != DEAD_FEATURE


def test_layer_summary_has_a_row_per_sae(store):
    summary = store.layer_summary()
    assert list(summary.short_name) == ["L0R", "L1A", "L1T", "L1M"]
    assert (summary.l0 > 0).all() and sum(summary.log10_density_counts.iloc[1]) == summary.alive.iloc[1]


def test_missing_and_other_version_files_are_refused(precomputed_run, tmp_path):
    with pytest.raises(FeatureDBError, match="does not exist; build it with `sae-explorer precompute"):
        FeatureStore(tmp_path / "nothing.duckdb")
    copy = tmp_path / DB_FILE
    shutil.copy(precomputed_run / DB_FILE, copy)
    with duckdb.connect(str(copy)) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [json.dumps(999)])
    with pytest.raises(FeatureDBError, match=f"schema version 999, this sae-explorer reads version {SCHEMA_VERSION}"):
        FeatureStore(copy)
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(FeatureDBError, match="cannot open"):
        FeatureStore(garbage)

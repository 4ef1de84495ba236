"""A run's features split into one file per SAE answer every reader call like the one file they came from."""

from __future__ import annotations

import random
import shutil

import duckdb
import pandas as pd
import pytest

from sae_core.cli import main
from sae_core.features.amend import amend_each, feature_file
from sae_core.features.parts import PARTS_DIR, part_files
from sae_core.features.reader import FeatureStore
from sae_core.features.schema import DB_FILE, FeatureDBError
from sae_core.features.split import split_feature_file
from sae_core.testing.synthetic_features import build_synthetic


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same features as one file (run `one`) and split into one file per SAE (run `split`)."""
    root = tmp_path_factory.mktemp("parts")
    one, split = root / "one", root / "split"
    build_synthetic(one / DB_FILE, n_saes=3, d_sae=300, vocab_size=400, n_contexts=48, context_size=32,
                    explained_fraction=0.4, vector_dim=16)
    shutil.copytree(one, split)
    folder = split_feature_file(split / DB_FILE)
    assert folder == split / PARTS_DIR and not (split / DB_FILE).exists()
    return one, split


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


def test_every_reader_call_answers_alike(runs):
    one, split = runs
    with FeatureStore(one) as a, FeatureStore(split) as b:
        assert b.path == split / PARTS_DIR and len(part_files(b.path)) == 3
        assert a.search_index_problem is None and b.search_index_problem is None and b.vector_index_problem is None
        same(a.saes(), b.saes())
        same(a.layer_summary(), b.layer_summary())
        assert a.vocab == b.vocab and a.embedder_settings == b.embedder_settings
        volatile = ("content_id", "sae_files", "split_from")
        assert {k: v for k, v in a.meta.items() if k not in volatile} == {k: v for k, v in b.meta.items() if k not in volatile}
        assert b.meta["split_from"] == DB_FILE
        assert set(b.context_ids) <= set(a.context_ids)
        ids = [int(i) for i in b.context_ids[:5]]
        assert a.context_tokens(ids) == b.context_tokens(ids)
        rng = random.Random(0)
        for _ in range(15):
            sae, feature = rng.randrange(3), rng.randrange(300)
            pa_, pb = a.feature(sae, feature), b.feature(sae, feature)
            assert str(pa_.sae) == str(pb.sae) and str(pa_.feature) == str(pb.feature)  # str: NaN equals NaN
            for name in ("histogram", "top_logits", "bottom_logits", "examples", "explanations"):
                same(getattr(pa_, name), getattr(pb, name))
            for kind in pa_.neighbours:
                same(pa_.neighbours[kind], pb.neighbours[kind])
            assert a.describe(sae, [feature, 1, 2]) == b.describe(sae, [feature, 1, 2])
            assert a.labels(sae, [feature, 5]) == b.labels(sae, [feature, 5])
            assert a.is_dead(sae, feature) == b.is_dead(sae, feature)
            same(a.similar_features(sae, feature), b.similar_features(sae, feature))
        for kwargs in ({}, {"saes": [1]}, {"saes": [0, 2], "sort_by": "detection"}, {"layers": [1], "min_density": 1e-3},
                       {"explained_only": True, "min_score": ("fuzzing", 0.5), "descending": False}, {"offset": 50, "limit": 30}):
            same(a.list_features(**kwargs), b.list_features(**kwargs))
        for text in ("a", "th", "ing", "tokens such", "zzz"):
            same(a.search_label(text), b.search_label(text))
            same(a.search_explanation(text), b.search_explanation(text))
            same(a.search_text(text, saes=[2]), b.search_text(text, saes=[2]))
        for token in rng.sample(a.vocab, 10):
            same(a.search_token(token), b.search_token(token))
        query = a.vector_index.vectors_of(1, int(a.live_features(1)[0]))["examples"]
        same(a.search_by_vector(query), b.search_by_vector(query))
        assert a.live_features(2, 3) == b.live_features(2, 3)
        assert a.random_feature(rng=random.Random(4)) == b.random_feature(rng=random.Random(4))
        assert a.explained_by("synthetic", "synthetic") == b.explained_by("synthetic", "synthetic")


def test_writes_reach_the_part_of_their_sae_and_the_indexes_follow(runs, tmp_path):
    _, split = runs
    run = tmp_path / "run"
    shutil.copytree(split, run)
    folder = feature_file(run)
    before = {p.name: p.stat().st_mtime_ns for p in part_files(folder)}

    def rename(con: duckdb.DuckDBPyConnection, sae_ids: list[int]) -> None:
        if 1 in sae_ids:
            con.execute("UPDATE features SET label = 'renamed', label_lower = 'renamed' WHERE sae_id = 1 AND feature = 7")

    amend_each(run, rename)
    with FeatureStore(run) as store:
        assert store.search_index_problem is None and store.vector_index_problem is None
        assert store.search_label("renamed")[["sae_id", "feature"]].values.tolist() == [[1, 7]]
        assert store.feature(1, 7).feature["label"] == "renamed"
    assert all(p.stat().st_mtime_ns != before[p.name] for p in part_files(folder))  # each part amended once, atomically


def test_a_part_opens_alone_and_bad_folders_say_what_is_wrong(runs, tmp_path):
    one, split = runs
    part = part_files(split / PARTS_DIR)[1]
    with FeatureStore(part) as alone:
        assert alone.saes().sae_id.tolist() == [1] and len(alone.feature(1, 3).examples)
    folder = tmp_path / PARTS_DIR
    shutil.copytree(split / PARTS_DIR, folder)
    shutil.copy(part, folder / "copy.duckdb")
    with pytest.raises(FeatureDBError, match="both hold SAE 1"):
        FeatureStore(folder)
    (folder / "copy.duckdb").write_bytes(b"not a database")
    with pytest.raises(FeatureDBError, match="cannot open .*copy.duckdb"):
        FeatureStore(folder)


def test_the_cli_splits_and_everything_reads_the_folder(runs, tmp_path, capsys):
    one, _ = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    assert main(["split", str(run)]) == 0 and "3 feature files" in capsys.readouterr().out
    assert main(["split", str(run)]) == 2 and "split already" in capsys.readouterr().err
    assert main(["index", str(run)]) == 0
    assert main(["export", str(run), str(tmp_path / "parquet")]) == 0
    exported = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/parquet/features/*/*.parquet')").fetchall()[0][0]
    assert exported == 900

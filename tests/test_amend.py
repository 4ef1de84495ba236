"""Adding to a feature file in place: the version-1 upgrade, the embed command, and nothing lost on failure."""

from __future__ import annotations

import hashlib
import shutil

import duckdb
import pytest

from sae_core.cli import main
from sae_core.features.amend import amend, upgrade
from sae_core.features.reader import FeatureStore
from sae_core.features.schema import DB_FILE, RELEASE, SCHEMA_VERSION, FeatureDBError


def _digest(path):
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _version_1(precomputed_run, tmp_path):
    """A copy of the shared run's file as sae-explorer 0.1 wrote it: no explanation or vector tables, version 1."""
    run = tmp_path / "run"
    shutil.copytree(precomputed_run, run)
    with duckdb.connect(str(run / DB_FILE)) as con:
        con.execute("DROP TABLE explanations")
        con.execute("DROP TABLE feature_vectors")
        for table in RELEASE:
            con.execute(f"DROP TABLE {table}")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        con.execute("DELETE FROM meta WHERE key = 'embedder'")
    return run


def test_a_version_1_file_is_refused_with_the_upgrade_command_then_upgraded(precomputed_run, tmp_path, capsys):
    run = _version_1(precomputed_run, tmp_path)
    with pytest.raises(FeatureDBError, match=f"upgrade it in place with `sae-explorer upgrade {run}`"):
        FeatureStore(run)
    with duckdb.connect(str(run / DB_FILE), read_only=True) as con:
        before = con.execute("SELECT * FROM features ORDER BY sae_id, feature").df()
    assert main(["upgrade", str(run)]) == 0
    assert f"schema version 1 → {SCHEMA_VERSION}" in capsys.readouterr().out
    with FeatureStore(run) as store:
        assert store.meta["schema_version"] == SCHEMA_VERSION and store.meta["upgraded_from"] == 1
        assert store._df("SELECT * FROM features ORDER BY sae_id, feature").equals(before)
        assert store.explanations(0, 0).empty and store.embedder_settings is None
    assert upgrade(run) == (SCHEMA_VERSION, SCHEMA_VERSION)  # a second upgrade does nothing


def test_a_version_2_file_gets_the_release_tables_and_keeps_its_explanations(explained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(explained_run, run)
    with duckdb.connect(str(run / DB_FILE)) as con:
        for table in RELEASE:
            con.execute(f"DROP TABLE {table}")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        explanations = con.execute("SELECT count(*) FROM explanations").fetchone()[0]
    with pytest.raises(FeatureDBError, match="schema version 2, this sae-explorer reads version 3; upgrade it in place"):
        FeatureStore(run)
    assert upgrade(run) == (2, SCHEMA_VERSION)
    with FeatureStore(run) as store:
        assert len(store._df("SELECT * FROM explanations")) == explanations > 0
        assert store.release(0, 0).empty and store.release_sources().empty


def test_embed_command_adds_vectors_to_an_upgraded_file(precomputed_run, tmp_path):
    run = _version_1(precomputed_run, tmp_path)
    upgrade(run)
    assert main(["embed", str(run), "--device", "cpu"]) == 0
    with FeatureStore(run) as store:
        n_live = int(store._rows("SELECT count(*) FROM features WHERE NOT dead")[0][0])
        assert len(store.vector_index) == n_live and store.embedder_settings["dim"] == 384
        assert store.vector_index.dim == 384


def test_a_failed_amend_keeps_the_original(precomputed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(precomputed_run, run)
    digest = _digest(run / DB_FILE)
    with pytest.raises(RuntimeError, match="boom"), amend(run) as con:
        con.execute("DELETE FROM features")
        raise RuntimeError("boom")
    assert _digest(run / DB_FILE) == digest and not list(run.glob("*.amending*"))
    with pytest.raises(FeatureDBError, match="does not exist"):
        upgrade(tmp_path / "elsewhere")

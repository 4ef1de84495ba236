"""Parquet export: every table, row for row, readable back by an engine with hive partitioning."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from sae_core.cli import main
from sae_core.features.export_parquet import ORDER, export_parquet
from sae_core.features.release_stats import find_release_files, import_release_stats
from sae_core.features.schema import SCHEMA_VERSION
from sae_core.testing.synthetic_features import build_synthetic


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "features.duckdb"
    build_synthetic(path, n_saes=3, d_sae=300, vocab_size=400, n_contexts=16, context_size=32, explained_fraction=0.3,
                    vector_dim=16)
    release = path.parent / "release"
    release.mkdir()
    pd.DataFrame({"feature": [1, 2], "density": [0.1, 0.2], "note": ["a", "b"]}).to_parquet(release / "feature_metrics.parquet")
    pd.DataFrame({"feature": [1], "text": ["hello"], "activation": [2.0]}).to_parquet(release / "feature_prompts.parquet")
    import_release_stats(path, "L0R", find_release_files(release), "a release")  # every table has rows
    return path


def test_every_table_comes_back_row_for_row(db, tmp_path):
    out = tmp_path / "parquet"
    rows = export_parquet(db, out)
    schema = json.loads((out / "schema.json").read_text())
    assert set(schema["tables"]) == set(ORDER) and schema["meta"]["schema_version"] == SCHEMA_VERSION
    assert sorted(p.name for p in (out / "features").iterdir()) == ["sae_id=0", "sae_id=1", "sae_id=2"]
    with duckdb.connect(str(db), read_only=True) as con:
        for table, info in schema["tables"].items():
            original = con.execute(f"SELECT * FROM {table} ORDER BY {ORDER[table]}").df()
            exported = con.execute(f"SELECT * FROM read_parquet(?, hive_partitioning = false) ORDER BY {ORDER[table]}",
                                   [str(out / info["path"])]).df()
            assert rows[table] == len(original) > 0 and list(exported.columns) == list(original.columns), table
            assert exported.astype(str).equals(original.astype(str)), table


def test_the_cli_replaces_an_export_but_never_another_folder(db, tmp_path, capsys):
    out = tmp_path / "parquet"
    assert main(["export", str(db), str(out)]) == 0 and "features" in capsys.readouterr().out
    (out / "features" / "stray.txt").write_text("from before")
    assert main(["export", str(db), str(out)]) == 0 and not (out / "features" / "stray.txt").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["export", str(db), str(other)]) == 2
    assert (other / "notes.txt").read_text() == "keep me" and "not an earlier Parquet export" in capsys.readouterr().err

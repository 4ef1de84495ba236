"""The features.duckdb schema: tables, indexes and the version check every reader does.

One file per run holds every SAE. Rows of `features`, `examples` and `neighbours` are written in
(sae_id, feature) order and indexed on it, so one feature page is a few indexed lookups.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from ..errors import UserError

SCHEMA_VERSION = 3
"""Version 2 added `explanations` and `feature_vectors`, version 3 the `release_*` tables (`sae-explorer upgrade RUN`
brings an older file up)."""
UPGRADABLE = {1, 2}
"""Older versions `upgrade` can bring to this one without recomputing anything."""
DB_FILE = "features.duckdb"

COLUMNS: dict[str, dict[str, str]] = {
    "meta": {"key": "VARCHAR", "value": "VARCHAR"},  # values are JSON
    "saes": {
        "sae_id": "INTEGER", "hook_name": "VARCHAR", "short_name": "VARCHAR", "layer": "INTEGER", "site": "VARCHAR",
        "architecture": "VARCHAR", "d_in": "INTEGER", "d_sae": "INTEGER", "k": "INTEGER", "folder": "VARCHAR",
        "n_tokens": "BIGINT", "l0_precompute": "DOUBLE", "dead_fraction_precompute": "DOUBLE",
        # the held-out metrics of the SAE's metrics.json (METRIC_COLUMNS), and the whole file as JSON
        "fvu": "DOUBLE", "explained_variance": "DOUBLE", "l0": "DOUBLE", "dead_fraction": "DOUBLE",
        "dense_fraction": "DOUBLE", "ce_loss_recovered": "DOUBLE", "kl_div": "DOUBLE", "delta_lm_loss": "DOUBLE",
        "metrics": "VARCHAR",
    },
    "vocab": {"token_id": "INTEGER", "token": "VARCHAR"},
    "contexts": {"context_id": "INTEGER", "token_ids": "INTEGER[]"},
    "features": {
        "sae_id": "INTEGER", "feature": "INTEGER",
        "fires": "BIGINT", "density": "DOUBLE", "max_act": "FLOAT", "mean_act": "FLOAT", "dead": "BOOLEAN",
        "hist_max": "FLOAT", "hist_counts": "INTEGER[]",  # equal bins of (0, hist_max]
        "top_logit_ids": "INTEGER[]", "top_logit_values": "FLOAT[]", "bottom_logit_ids": "INTEGER[]",
        "bottom_logit_values": "FLOAT[]",
        "top_token_ids": "INTEGER[]",  # distinct tokens at the maxima of the top examples, most frequent first
        "label": "VARCHAR",
        "label_lower": "VARCHAR",  # lower(label), stored: a substring search scans it 4× faster than ILIKE
    },
    "examples": {
        "sae_id": "INTEGER", "feature": "INTEGER",
        "kind": "TINYINT",  # 0: top example; j >= 1: sample from quantile interval j (higher = stronger)
        "rank": "SMALLINT",  # order within (feature, kind)
        "context_id": "INTEGER", "position": "SMALLINT", "activation": "FLOAT",
        "window_start": "SMALLINT", "acts": "FLOAT[]",  # the feature on tokens window_start … window_start + len(acts) - 1
    },
    "neighbours": {
        "sae_id": "INTEGER", "feature": "INTEGER",
        "kind": "VARCHAR",  # 'decoder_cosine' or 'coactivation'
        "ids": "INTEGER[]", "scores": "FLOAT[]", "counts": "INTEGER[]",
    },
    "site_summary": {
        "sae_id": "INTEGER", "hook_name": "VARCHAR", "short_name": "VARCHAR", "layer": "INTEGER", "site": "VARCHAR",
        "d_sae": "INTEGER", "n_tokens": "BIGINT", "alive": "INTEGER", "dead_fraction": "DOUBLE", "l0": "DOUBLE",
        "density_p10": "DOUBLE", "density_median": "DOUBLE", "density_p90": "DOUBLE", "max_act_median": "DOUBLE",
        "log10_density_edges": "DOUBLE[]", "log10_density_counts": "INTEGER[]",  # alive features' log10 density
    },
    # written by `explain` and `embed`; empty in a fresh precompute. Several explainers may explain one feature;
    # the newest row is marked `current`.
    "explanations": {
        "sae_id": "INTEGER", "feature": "INTEGER",
        "explanation": "VARCHAR", "explanation_lower": "VARCHAR",
        "explainer": "VARCHAR", "scorer": "VARCHAR", "created": "VARCHAR",  # who wrote and who scored it; ISO time
        "current": "BOOLEAN",  # the feature's newest explanation: the one lists, searches and hovers show
        # balanced accuracy, balanced accuracy, AUROC (0.5 = chance); with another feature's explanation; with the
        # token handle (`label`)
        "detection": "DOUBLE", "fuzzing": "DOUBLE", "embedding": "DOUBLE",
        "detection_shuffled": "DOUBLE", "fuzzing_shuffled": "DOUBLE", "embedding_shuffled": "DOUBLE",
        "detection_handle": "DOUBLE", "fuzzing_handle": "DOUBLE", "embedding_handle": "DOUBLE",
        "n_activating": "INTEGER", "n_non_activating": "INTEGER",  # held-out contexts scored
        "details": "VARCHAR",  # JSON: the baselines' texts, per-context answers, the explainer's raw reply, options
    },
    "feature_vectors": {
        "sae_id": "INTEGER", "feature": "INTEGER",
        "source": "VARCHAR",  # 'examples' (its top contexts) or 'explanation'
        "scale": "FLOAT", "vector": "TINYINT[]",  # unit sentence embedding ≈ scale × vector (int8)
    },
    # written by `import-stats`: a published release's own statistics, kept beside ours and never mixed with them.
    # `origin` names where they came from (a Hub path or a folder); one SAE may hold several origins.
    "release_sources": {
        "sae_id": "INTEGER", "origin": "VARCHAR", "imported": "VARCHAR",  # ISO time
        "column_map": "VARCHAR",  # JSON: which of the release's columns each role was read from
        "summary": "VARCHAR",  # JSON: the release's own summary file, as it was (null without one)
    },
    "release_features": {
        "sae_id": "INTEGER", "feature": "INTEGER", "origin": "VARCHAR",
        "fires": "BIGINT", "density": "DOUBLE", "max_act": "DOUBLE", "mean_act": "DOUBLE",  # null where not given
        "extra": "VARCHAR",  # JSON: the row's other columns, unread but kept
    },
    "release_examples": {
        "sae_id": "INTEGER", "feature": "INTEGER", "origin": "VARCHAR",
        "rank": "INTEGER",  # the release's own rank, else by activation, strongest first
        "activation": "DOUBLE", "text": "VARCHAR", "token": "VARCHAR",  # text as the release gives it (not our tokens)
        "extra": "VARCHAR",
    },
}
"""Every table of a feature file: column → DuckDB type. The one place a table's columns are written: the DDL
below is made from it and every insert is checked against it (`check_columns`)."""
UNDERSTANDING = ("explanations", "feature_vectors")
"""The tables schema version 2 added (`upgrade` creates them in a version-1 file)."""
RELEASE = ("release_sources", "release_features", "release_examples")
"""The tables schema version 3 added: a release's own statistics (`sae_core.features.release_stats`)."""
SAE_IDENTITY = ("sae_id", "hook_name", "short_name", "layer", "site")
"""The columns that name an SAE, first in `saes` and `site_summary`."""
METRIC_COLUMNS = ("fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_loss_recovered", "kl_div",
                  "delta_lm_loss")
"""The held-out metrics `saes` copies from each SAE's metrics.json."""


ROW_ORDER = {"features": "sae_id, feature", "examples": "sae_id, feature, kind, rank", "neighbours": "sae_id, feature, kind",
             "explanations": "sae_id, feature, created", "feature_vectors": "sae_id, feature, source",
             "release_features": "sae_id, feature, origin", "release_examples": "sae_id, feature, origin, rank",
             "release_sources": "sae_id, origin", "saes": "sae_id", "site_summary": "sae_id", "vocab": "token_id",
             "contexts": "context_id", "meta": "key"}
"""Every table and the order its rows are written in (by a build, a split, an export)."""
assert set(ROW_ORDER) == set(COLUMNS)


def create_tables(tables: tuple[str, ...] | list[str]) -> str:
    """The CREATE TABLE statements of `tables`."""
    return "\n".join(f"CREATE TABLE {t} ({', '.join(f'{c} {kind}' for c, kind in COLUMNS[t].items())});" for t in tables)


TABLES = create_tables([t for t in COLUMNS if t not in UNDERSTANDING + RELEASE])
UNDERSTANDING_TABLES = create_tables(UNDERSTANDING)
RELEASE_TABLES = create_tables(RELEASE)


def check_columns(table: str, names: list[str] | tuple[str, ...] | set[str]) -> None:
    """Raise a ValueError naming the columns missing or unknown when rows for `table` do not give exactly its columns."""
    if table not in COLUMNS:
        raise ValueError(f"a feature file has no table {table!r}")
    missing, extra = [c for c in COLUMNS[table] if c not in names], sorted(set(names) - set(COLUMNS[table]))
    if missing or extra:
        raise ValueError(f"rows for {table}: " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"unknown {', '.join(extra)}" if extra else "") if part))


def sae_identity(sae_id: int, hook_name: str, short_name: str, layer: int, site: str) -> dict[str, list[Any]]:
    """The `SAE_IDENTITY` columns of one SAE's row in `saes` or `site_summary`."""
    return {"sae_id": [sae_id], "hook_name": [hook_name], "short_name": [short_name], "layer": [layer], "site": [site]}


UNDERSTANDING_INDEXES = """
CREATE INDEX explanations_feature ON explanations (sae_id, feature);
"""
RELEASE_INDEXES = """
CREATE INDEX release_features_feature ON release_features (sae_id, feature);
CREATE INDEX release_examples_feature ON release_examples (sae_id, feature);
"""
INDEXES = """
CREATE UNIQUE INDEX saes_id ON saes (sae_id);
CREATE UNIQUE INDEX vocab_id ON vocab (token_id);
CREATE UNIQUE INDEX contexts_id ON contexts (context_id);
CREATE UNIQUE INDEX features_id ON features (sae_id, feature);
CREATE INDEX examples_feature ON examples (sae_id, feature);
CREATE INDEX neighbours_feature ON neighbours (sae_id, feature);
""" + UNDERSTANDING_INDEXES + RELEASE_INDEXES
"""Every index of a feature file of this version (a new file gets them all)."""
ADDED = {2: (UNDERSTANDING_TABLES, UNDERSTANDING_INDEXES), 3: (RELEASE_TABLES, RELEASE_INDEXES)}
"""What each schema version added to the one before: its tables and their indexes (what `upgrade` runs)."""


class FeatureDBError(UserError):
    """A features.duckdb file is missing, unreadable or of another schema version."""


def file_identity(path: str | Path, con: duckdb.DuckDBPyConnection) -> str:
    """What an index records of the feature file it was built from: the file's `content_id` (a new one at every
    write), or its size and modification time for files written before `content_id` existed."""
    rows = con.cursor().execute("SELECT value FROM meta WHERE key = 'content_id'").fetchall()
    row = rows[0] if rows else None
    if row:
        return str(json.loads(row[0]))
    stat = Path(path).stat()
    return f"file:{stat.st_size}:{stat.st_mtime_ns}"


FILE_CATALOG = "f"
"""The catalog a feature file is attached as by `open_read_only` (its tables are also views of the default one)."""


def open_read_only(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open a features.duckdb file read-only after checking that it exists and has this schema version.

    The file is attached to a new in-memory database whose views show its tables, rather than opened with
    `duckdb.connect(path)`: DuckDB keeps one instance per path in a process, so a connection to a file that was
    rebuilt (renamed over) while an older connection is open would silently read the old file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DB_FILE
    if not path.is_file():
        raise FeatureDBError(f"{path} does not exist; build it with `sae-explorer precompute RUN`")
    con = duckdb.connect(":memory:")
    try:
        try:
            con.execute(f"ATTACH '{str(path).replace(chr(39), chr(39) * 2)}' AS {FILE_CATALOG} (READ_ONLY)")
        except duckdb.Error as e:
            raise FeatureDBError(f"cannot open {path} as a DuckDB file ({e}); rebuild it with `sae-explorer precompute`") from None
        check_schema_version(con, path, f"{FILE_CATALOG}.")
        tables = con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [FILE_CATALOG]).fetchall()
        for (table,) in tables:
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM {FILE_CATALOG}."{table}"')
    except BaseException:
        con.close()
        raise
    return con


def check_schema_version(con: duckdb.DuckDBPyConnection, path: Path, catalog: str = "") -> None:
    """Raise a `FeatureDBError` that says what to do unless the feature file open in `con` (or attached to it as
    `catalog`, given with its trailing dot) has this schema version."""
    try:
        row = (con.execute(f"SELECT value FROM {catalog}meta WHERE key = 'schema_version'").fetchall() or [None])[0]
    except duckdb.Error:
        row = None
    version = int(row[0]) if row else None
    if version in UPGRADABLE:
        raise FeatureDBError(
            f"{path} has schema version {version}, this sae-explorer reads version {SCHEMA_VERSION}; upgrade it in place "
            f"with `sae-explorer upgrade {path.parent}` (keeps every statistic, takes seconds)"
        )
    if version != SCHEMA_VERSION:
        raise FeatureDBError(
            f"{path} has schema version {version if version is not None else 'unknown'}, this sae-explorer reads "
            f"version {SCHEMA_VERSION}; rebuild it with `sae-explorer precompute` (or use the matching sae-explorer)"
        )

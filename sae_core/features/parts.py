"""A run's features split into one feature file per SAE (`RUN/features/L6R.duckdb` …), read as one store.

Each part is an ordinary feature file holding one SAE under its run-wide `sae_id`, the vocabulary and the
contexts its own examples use, so parts are built in parallel (ranks, machines), copied and served one by
one, and any part opens alone. A reader attaches every part to one in-memory DuckDB database: views named
like the tables union the parts for questions across SAEs, and a question about one SAE runs in its part
alone (`search_path`), so a feature page costs what it costs in a single file. The indexes are one per
store, beside the folder (`RUN/features.search.sqlite`, `RUN/features.vectors/`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb

from .schema import DB_FILE, FILE_CATALOG, FeatureDBError, check_schema_version, open_read_only

PARTS_DIR = "features"
"""The folder of a run that holds its parts (instead of `features.duckdb`)."""
UNION_TABLES = ("saes", "features", "examples", "neighbours", "site_summary", "explanations", "feature_vectors",
                "release_sources", "release_features", "release_examples")
"""Tables whose rows belong to one SAE: each part holds its own, the store's view unions them."""


def part_files(folder: Path) -> list[Path]:
    """The parts of a split store, by name."""
    return sorted(p for p in folder.glob("*.duckdb") if p.is_file())


def store_path(path: str | Path) -> Path:
    """What a run folder's features are: `RUN/features.duckdb`, else the folder of parts `RUN/features/`; a file or a
    folder of parts given directly is taken as is (whether it exists is checked when it is opened)."""
    path = Path(path)
    if not path.is_dir():
        return path
    single, parts = path / DB_FILE, path / PARTS_DIR
    if single.exists():
        return single
    if parts.is_dir() and part_files(parts):
        return parts
    return path if part_files(path) else single


def store_stamp(path: Path) -> tuple[tuple[str, int], ...]:
    """Changes whenever the features at `path` (a file or a folder of parts) are rewritten: what a cache of open
    stores keys on."""
    files = part_files(path) if path.is_dir() else [path] if path.is_file() else []
    return tuple((f.name, f.stat().st_mtime_ns) for f in files)


def store_of(file: Path) -> Path:
    """The store a feature file belongs to: its folder when it is a part, else itself."""
    return file.parent if file.parent.name == PARTS_DIR and file.name != DB_FILE else file


def open_store(path: Path) -> tuple[duckdb.DuckDBPyConnection, dict[int, str]]:
    """A read-only connection to a feature file or a folder of parts, and for parts which catalog holds each SAE."""
    if not path.is_dir():
        con = open_read_only(path)
        # one SAE's queries go straight to the file's tables (`FeatureStore._cursor`), the rest through the views
        return con, {int(sae_id): FILE_CATALOG for (sae_id,) in con.execute("SELECT sae_id FROM saes").fetchall()}
    parts = part_files(path)
    if not parts:
        raise FeatureDBError(f"{path} holds no feature files; build them with `sae-explorer precompute RUN`")
    con = duckdb.connect(":memory:")
    catalogs: dict[int, str] = {}
    identities, models, sae_files = [], [], {}
    try:
        for i, part in enumerate(parts):
            try:
                con.execute(f"ATTACH '{quoted(part)}' AS p{i} (READ_ONLY)")
            except duckdb.Error as e:
                raise FeatureDBError(f"cannot open {part} as a DuckDB file ({e}); rebuild it, or move it out of {path}") from None
            check_schema_version(con, part, f"p{i}.")
            for (sae_id,) in con.execute(f"SELECT sae_id FROM p{i}.saes").fetchall():
                if sae_id in catalogs:
                    other = parts[int(catalogs[sae_id][1:])]
                    raise FeatureDBError(f"{other.name} and {part.name} in {path} both hold SAE {sae_id}; remove one of them")
                catalogs[int(sae_id)] = f"p{i}"
            meta = dict(con.execute(f"SELECT key, value FROM p{i}.meta WHERE key IN ('content_id', 'model', 'sae_files')").fetchall())
            sae_files.update(json.loads(meta.get("sae_files") or "{}"))
            identities.append(f"{part.name}:{meta.get('content_id')}")
            models.append(meta.get("model"))
            if models[-1] != models[0]:
                raise FeatureDBError(f"{part.name} in {path} is of model {models[-1]}, {parts[0].name} of "
                                     f"{models[0]}; a store holds the SAEs of one model")
        union = " UNION ALL ".join
        for table in UNION_TABLES:
            con.execute(f"CREATE VIEW {table} AS " + union(f"SELECT * FROM p{i}.{table}" for i in range(len(parts))))
        con.execute("CREATE VIEW vocab AS SELECT * FROM p0.vocab")
        con.execute("CREATE VIEW contexts AS SELECT context_id, any_value(token_ids) AS token_ids FROM ("
                    + union(f"SELECT * FROM p{i}.contexts" for i in range(len(parts))) + ") GROUP BY context_id")
        identity = json.dumps(hashlib.sha256("\n".join(identities).encode()).hexdigest()[:32])
        con.execute("CREATE VIEW meta AS SELECT * FROM p0.meta WHERE key NOT IN ('content_id', 'sae_files') "
                    f"UNION ALL SELECT 'content_id', {sql_text(identity)} UNION ALL SELECT 'sae_files', {sql_text(json.dumps(sae_files))}")
    except BaseException:
        con.close()
        raise
    return con, catalogs


def quoted(path: Path) -> str:
    """A path inside single quotes of SQL (for ATTACH and COPY, which take no parameters)."""
    return str(path).replace("'", "''")


def sql_text(text: str) -> str:
    """A string literal of SQL (for views, which take no parameters)."""
    return "'" + text.replace("'", "''") + "'"

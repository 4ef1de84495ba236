"""Every table of a feature file as Parquet, for engines that read it (DuckDB, Spark, BigQuery, pandas,
Polars): the per-feature tables partitioned by SAE, hive style (`features/sae_id=3/data_0.parquet`, the
`sae_id` column kept in the files too), the others one file each, and `schema.json` with every table's
columns and types and the file's `meta`. The columns mean what they mean in the feature file (`schema.py`; docs/scale.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..io import atomic_folder, check_replaceable
from .parts import open_store, quoted
from .schema import ROW_ORDER

PARTITIONED = ("features", "examples", "neighbours", "explanations", "feature_vectors", "release_features",
               "release_examples")
"""Tables with one row per feature (or several): written one folder per SAE."""
ORDER = ROW_ORDER
"""Every table and its row order in the export."""


def export_parquet(db_path: str | Path, out: str | Path) -> dict[str, int]:
    """Write the tables of a feature file under the folder `out` (replaced as a whole, only on success); rows per table."""
    out = Path(out)
    check_replaceable(out, "schema.json", "Parquet export")
    con, _ = open_store(Path(db_path))
    with con, atomic_folder(out) as tmp:
        schema: dict[str, object] = {"meta": {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta").fetchall()},
                                     "tables": {}}
        for table in tqdm(ORDER, desc="parquet", unit="table", file=sys.stderr, leave=False):
            query = f"SELECT * FROM {table} ORDER BY {ORDER[table]}"
            if table in PARTITIONED:
                con.execute(f"COPY ({query}) TO '{quoted(tmp / table)}' "
                            "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (sae_id), WRITE_PARTITION_COLUMNS true)")
            else:
                con.execute(f"COPY ({query}) TO '{quoted(tmp / f'{table}.parquet')}' (FORMAT parquet, COMPRESSION zstd)")
            columns = con.execute(f"DESCRIBE {table}").fetchall()
            rows = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            schema["tables"][table] = {  # type: ignore[index]
                "rows": rows, "partitioned_by": "sae_id" if table in PARTITIONED else None,
                "path": f"{table}/sae_id=*/*.parquet" if table in PARTITIONED else f"{table}.parquet",
                "columns": {name: kind for name, kind, *_ in columns},
            }
        (tmp / "schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    return {t: info["rows"] for t, info in schema["tables"].items()}  # type: ignore[union-attr]

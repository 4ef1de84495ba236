"""Split a run's features.duckdb into one feature file per SAE (`RUN/features/`, see `parts`), losslessly:
every row of every table lands in the part of its SAE, with the vocabulary and the contexts its examples use."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError
from ..io import atomic_folder
from .indexes import refresh_indexes
from .parts import PARTS_DIR, UNION_TABLES, quoted
from .schema import ROW_ORDER, open_read_only
from .writer import FeatureDBWriter


def part_name(short_name: str) -> str:
    """The file of one SAE's part: its short name (`L6R.duckdb`)."""
    return f"{short_name}.duckdb"


def split_feature_file(db_path: str | Path) -> Path:
    """Write the parts of `RUN/features.duckdb` into `RUN/features/`, remove the single file, rebuild the indexes
    for the folder; returns the folder. Nothing is removed unless every part was written."""
    src = Path(db_path)
    out = src.with_name(PARTS_DIR)
    if out.exists():
        raise UserError(f"{out} exists already; move it away to split {src} again")
    with open_read_only(src) as con:
        meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta").fetchall()}
        saes = con.execute("SELECT sae_id, short_name, hook_name FROM saes ORDER BY sae_id").fetchall()
    sae_files = meta.pop("sae_files", {}) or {}
    for key in ("schema_version", "content_id"):
        meta.pop(key, None)
    with atomic_folder(out) as tmp:
        for sae_id, short, hook in tqdm(saes, desc="split", unit="SAE", file=sys.stderr, leave=False):
            with FeatureDBWriter(tmp / part_name(short), indexes=False) as db:
                assert db.con is not None
                db.con.execute(f"ATTACH '{quoted(src)}' AS src (READ_ONLY)")
                for table in UNION_TABLES:
                    db.con.execute(f"INSERT INTO {table} SELECT * FROM src.{table} WHERE sae_id = ? ORDER BY {ROW_ORDER[table]}",
                                   [sae_id])
                db.con.execute("INSERT INTO vocab SELECT * FROM src.vocab ORDER BY token_id")
                db.con.execute("""INSERT INTO contexts SELECT * FROM src.contexts WHERE context_id IN
                                  (SELECT DISTINCT context_id FROM src.examples WHERE sae_id = ?) ORDER BY context_id""", [sae_id])
                db.con.execute("DETACH src")
                db.finish({**meta, "sae_files": {hook: sae_files[hook]} if hook in sae_files else {}, "split_from": src.name})
    src.unlink()
    refresh_indexes(out)  # the store's indexes have the single file's names: these replace its own
    return out

"""Write features.duckdb: built under a temporary name beside the target and renamed into place when complete.

An interrupted or failed build leaves the previous file untouched (and its temporary file is
removed at the next build).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch import Tensor

from ..io import atomic_path
from .indexes import refresh_indexes
from .schema import (
    INDEXES,
    RELEASE_TABLES,
    SCHEMA_VERSION,
    TABLES,
    UNDERSTANDING_TABLES,
    check_columns,
)

TMP_SUFFIX = ".building"


def list_array(rows: Tensor | np.ndarray, lengths: Tensor | np.ndarray | None = None, dtype: pa.DataType = pa.float32()) -> pa.Array:
    """A pyarrow list array from a `(n, m)` matrix, each row cut to `lengths[i]` (default: all m)."""
    rows = rows.numpy() if isinstance(rows, Tensor) else np.asarray(rows)
    n, m = rows.shape
    if lengths is None:
        offsets = np.arange(0, n * m + 1, m, dtype=np.int32)
        values = rows.reshape(-1)
    else:
        lengths = lengths.numpy() if isinstance(lengths, Tensor) else np.asarray(lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = rows[np.arange(m)[None, :] < lengths[:, None]]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=dtype))


class FeatureDBWriter:
    """Builds one features.duckdb file; use as a context manager (renamed into place only on success, then its indexes
    are built, unless `indexes=False`: the parts of a split store share one set, built once for the store)."""

    def __init__(self, path: str | Path, *, indexes: bool = True):
        self.path = Path(path)
        self.indexes = indexes
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.con: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> FeatureDBWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_tmp()  # a build that was killed earlier
        self.con = duckdb.connect(str(self.tmp))
        self.con.execute(TABLES + UNDERSTANDING_TABLES + RELEASE_TABLES)
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
        if exc_type is None:
            os.replace(self.tmp, self.path)
            if self.indexes:
                refresh_indexes(self.path)
        else:
            self._remove_tmp()

    def _remove_tmp(self) -> None:
        for p in (self.tmp, self.tmp.with_name(self.tmp.name + ".wal")):
            p.unlink(missing_ok=True)

    def insert(self, table: str, columns: dict[str, Any]) -> None:
        """Append rows given as columns (numpy arrays, tensors, lists or pyarrow arrays) by column name."""
        assert self.con is not None
        insert_columns(self.con, table, columns)

    def insert_parts(self, folder: Path) -> None:
        """Append the rows of a folder written by `write_parts`, in the order they were written."""
        assert self.con is not None
        for path in sorted(folder.glob("*.parquet")):
            table = path.stem.split("-", 1)[1]
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet(?)", [str(path)])

    def finish(self, meta: dict[str, Any]) -> None:
        """Write `meta` (plus the schema version and a new content id), build the indexes and flush everything."""
        assert self.con is not None
        items = {"schema_version": SCHEMA_VERSION, **meta, "content_id": uuid.uuid4().hex}
        self.insert("meta", {"key": list(items), "value": [json.dumps(v) for v in items.values()]})
        self.con.execute(INDEXES)
        self.con.execute("CHECKPOINT")


def write_parts(folder: Path, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """Write one SAE's rows as Parquet files `NNN-<table>.parquet` for `FeatureDBWriter.insert_parts` (a rank's part)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (table, columns) in enumerate(rows):
        check_columns(table, list(columns))
        with atomic_path(folder / f"{i:03d}-{table}.parquet") as tmp:
            pq.write_table(pa.table({name: _arrow(value) for name, value in columns.items()}), tmp)


def insert_columns(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, Any]) -> None:
    """Append rows given as columns (numpy arrays, tensors, lists or pyarrow arrays) to `table` by column name; the
    columns must be exactly the table's (`schema.COLUMNS`)."""
    check_columns(table, list(columns))
    con.register("_rows", pa.table({name: _arrow(value) for name, value in columns.items()}))
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
    finally:
        con.unregister("_rows")


def _arrow(value: Any) -> pa.Array:
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return value
    if isinstance(value, Tensor):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return pa.array(value)
    return pa.array(list(value) if not isinstance(value, Sequence) else value)

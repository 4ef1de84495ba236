"""The indexes beside a feature file, rebuilt together after every write: text search (`search_index`) and
vectors (`ann_index`). Both are caches: a reader that finds one missing or stale says so and falls back."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import duckdb

from .ann_index import build_vector_index
from .search_index import build_search_index

log = logging.getLogger(__name__)


def refresh_indexes(db_path: str | Path) -> None:
    """Rebuild the indexes after a write to the feature file; a failure is logged (readers then scan), never raised."""
    for name, build in (("search index", build_search_index), ("vector index", build_vector_index)):
        try:
            build(db_path)
        except (sqlite3.Error, OSError, duckdb.Error, RuntimeError, ValueError) as e:
            log.warning("%s not built (%s); the reader falls back to scanning the feature file. "
                        "Build it later with `sae-explorer index RUN`", name, e)

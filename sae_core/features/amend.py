"""Add to an existing features.duckdb without ever damaging it: copy, change the copy, rename it into place.

`explain`, `embed` and `upgrade` write this way. A lock file beside the feature file serialises writers (two
`explain` jobs finishing at once would otherwise each rename their own copy over the other's); readers never
wait: they keep the old file until they reopen.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from ..errors import UserError
from .indexes import refresh_indexes
from .parts import part_files, store_of, store_path
from .schema import ADDED, SCHEMA_VERSION, UPGRADABLE, FeatureDBError, open_read_only

AMEND_SUFFIX = ".amending"


def feature_file(path: str | Path) -> Path:
    """A run's features, which must exist: its features.duckdb, or its folder of one file per SAE (`parts`)."""
    path = store_path(path)
    if not (path.is_file() or (path.is_dir() and part_files(path))):
        raise FeatureDBError(f"{path} does not exist; build it with `sae-explorer precompute RUN`")
    return path


def amend_each(path: str | Path, write: Callable[[duckdb.DuckDBPyConnection, list[int]], None], *,
               check_version: bool = True, sae_id: int | None = None) -> None:
    """`write(connection, its SAE ids)` into every file of a run's features (one, or each part of a split store) with
    `amend`, then rebuild the indexes once; with `sae_id`, only into the file that holds that SAE (a split store's
    other parts are not copied)."""
    store = feature_file(path)
    for file in part_files(store) if store.is_dir() else [store]:
        if sae_id is not None and store.is_dir() and sae_id not in _sae_ids(file):
            continue
        with amend(file, check_version=check_version, refresh=False) as con:
            write(con, [int(i) for (i,) in con.execute("SELECT sae_id FROM saes").fetchall()])
    refresh_indexes(store)


@contextlib.contextmanager
def amend(path: str | Path, *, check_version: bool = True, refresh: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to a copy of the feature file, renamed over the original when the block succeeds.

    An exception (or a kill) leaves the original untouched; the copy is removed at the next amend. The indexes
    of its store are rebuilt after the rename (unless `refresh=False`: `amend_each` rebuilds them once for all
    parts). A split store is amended part by part: `amend_each`.
    """
    path = feature_file(path)
    if path.is_dir():
        raise UserError(f"{path} holds one feature file per SAE; write to them one by one (`amend_each`)")
    if check_version:
        open_read_only(path).close()  # the version check and its message
    tmp = path.with_name(path.name + AMEND_SUFFIX)
    with _locked(path):
        _remove(tmp)
        try:
            shutil.copyfile(path, tmp)
        except BaseException:  # e.g. the disk filled up: no half copy is left behind
            _remove(tmp)
            raise
        con = duckdb.connect(str(tmp))
        try:
            yield con
            set_meta(con, {"content_id": uuid.uuid4().hex})  # the indexes built before this write are stale now
            con.execute("CHECKPOINT")
            con.close()
            os.replace(tmp, path)
        except BaseException:
            con.close()
            _remove(tmp)
            raise
        if refresh:
            refresh_indexes(store_of(path))


def set_meta(con: duckdb.DuckDBPyConnection, items: dict[str, Any]) -> None:
    """Write `meta` keys (values stored as JSON), replacing earlier values of the same keys."""
    for key, value in items.items():
        con.execute("DELETE FROM meta WHERE key = ?", [key])
        con.execute("INSERT INTO meta VALUES (?, ?)", [key, json.dumps(value)])


def upgrade(path: str | Path) -> tuple[int, int]:
    """Bring a feature file of an older schema version to this one in place; returns `(old, new)` version.

    Each version adds empty tables (2: explanations and vectors; 3: a release's statistics): nothing is recomputed.
    """
    store = feature_file(path)
    versions = [_upgrade_file(file) for file in (part_files(store) if store.is_dir() else [store])]
    if any(old != new for old, new in versions):
        refresh_indexes(store)  # once, after every part of a split store
    return versions[0]


def _upgrade_file(path: Path) -> tuple[int, int]:
    """`upgrade` of one feature file, leaving the indexes to the caller."""
    version = _version(path)
    if version == SCHEMA_VERSION:
        return version, version
    if version not in UPGRADABLE:
        raise FeatureDBError(
            f"{path} has schema version {version}, which this sae-explorer cannot upgrade; rebuild it with "
            "`sae-explorer precompute` (or use the matching sae-explorer)"
        )
    with amend(path, check_version=False, refresh=False) as con:
        for added in range(version + 1, SCHEMA_VERSION + 1):
            con.execute("".join(ADDED[added]))
        set_meta(con, {"schema_version": SCHEMA_VERSION, "upgraded_from": version})
    return version, SCHEMA_VERSION


def _sae_ids(path: Path) -> set[int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {int(i) for (i,) in con.execute("SELECT sae_id FROM saes").fetchall()}


def _version(path: Path) -> int | None:
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except duckdb.Error as e:
        raise FeatureDBError(f"cannot read {path} as a feature file ({e}); rebuild it with `sae-explorer precompute`") from None
    return int(json.loads(row[0])) if row else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        handle = open(lock, "a")
    except OSError as e:
        raise UserError(f"cannot write beside {path} ({e}); the run folder must be writable to add to its feature file") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(tmp: Path) -> None:
    for p in (tmp, tmp.with_name(tmp.name + ".wal")):
        p.unlink(missing_ok=True)

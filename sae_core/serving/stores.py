"""Feature stores shared by every session of a server: one open store per run, reopened when its files are rebuilt,
and the last good one kept when the new files cannot be opened (deleted, truncated, not DuckDB, half-copied)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..errors import UserError
from ..features.parts import store_path, store_stamp
from ..features.reader import FeatureStore
from .limits import LRUCache


@dataclass
class _Opened:
    stamp: tuple[tuple[str, int], ...]
    store: FeatureStore
    opened_at: float


class StoreShelf:
    """The open feature store of each run folder (at most `capacity` runs; the least recently used is dropped)."""

    def __init__(self, capacity: int = 8):
        self._open: LRUCache[_Opened] = LRUCache(capacity)
        self._lock = threading.Lock()

    def open(self, run: str | Path) -> tuple[FeatureStore, str | None]:
        """The run's store and, when its files changed into something unreadable, a note saying that an earlier
        version is shown; a `UserError` saying what to do when there is no good version at all."""
        path = store_path(run)
        key = str(Path(run).resolve())
        stamp = store_stamp(path)
        held = self._open.peek(key)
        if held is not None and held.stamp == stamp:
            return held.store, None
        with self._lock:  # one session reopens; the others wait for it, then find it open
            held = self._open.peek(key)
            if held is not None and held.stamp == stamp:
                return held.store, None
            try:
                store = FeatureStore(path)
            except (UserError, duckdb.Error, OSError) as exc:
                if held is None:
                    raise UserError(str(exc)) from None
                when = time.strftime("%H:%M:%S", time.localtime(held.opened_at))
                return held.store, (f"The feature files changed and cannot be opened ({exc}); showing the version "
                                    f"opened at {when} until they are readable again.")
            self._open.put(key, _Opened(stamp, store, time.time()))
            return store, None

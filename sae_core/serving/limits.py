"""Bounds on what a shared server spends: an LRU of loaded models, a line for model work, a per-session rate."""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from ..errors import UserError

V = TypeVar("V")


class Busy(UserError):
    """The line for the model is full: the visitor should try again shortly."""


class RateLimited(UserError):
    """This session asked for more model work than its share; says when it may ask again."""


class LRUCache(Generic[V]):
    """At most `capacity` values, the least recently used dropped first; a value is built once even when several
    sessions ask for it at the same moment (they wait for the one building it). With `collect`, a full garbage
    collection follows each eviction: for models, whose memory sits in reference cycles; not for small values, where
    it would cost every eviction ~0.1 s of the interpreter that serves every session."""

    def __init__(self, capacity: int, on_evict: Callable[[V], None] | None = None, collect: bool = False):
        self.capacity = capacity
        self.collect = collect
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}
        self._on_evict = on_evict

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """The value for `key`, built with `build()` (outside the cache's lock) when absent."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._items:  # built by another session while this one waited
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = build()
            finally:
                with self._lock:
                    self._building.pop(key, None)
            self.put(key, value)
            return value

    def peek(self, key: Hashable) -> V | None:
        """The value for `key` if present (marked as just used), else None; never builds."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Hashable, value: V) -> None:
        evicted = []
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False)[1])
        for old in evicted:
            if self._on_evict is not None:
                self._on_evict(old)
        if evicted and self.collect:
            del evicted, old
            gc.collect()  # a model is a large reference cycle-bearing object: give its memory back now

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


class JobQueue:
    """At most `slots` jobs run at once, the rest wait first come, first served; at most `max_waiting` may wait."""

    def __init__(self, slots: int = 1, max_waiting: int = 16):
        self.slots = slots
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: deque[object] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextmanager
    def slot(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
        """Hold a slot for the `with` block; while waiting, `on_wait(position)` (1 = next in line) is called every `poll_s`
        or sooner; `Busy` when the line is full."""
        ticket = object()

        def my_turn() -> bool:
            return self._waiting[0] is ticket and self._running < self.slots

        with self._cond:
            if self._running < self.slots and not self._waiting:
                self._running += 1
            else:
                if len(self._waiting) >= self.max_waiting:
                    raise Busy(f"the model is busy ({self._running} job(s) running, {len(self._waiting)} waiting); "
                               "try again in a minute")
                self._waiting.append(ticket)
                try:
                    while not my_turn():
                        if on_wait is not None:
                            position = self._waiting.index(ticket) + 1
                            self._cond.release()  # the callback draws on the page: never while holding the lock
                            try:
                                on_wait(position)  # a visitor who left is stopped here (Streamlit raises on its calls)
                            finally:
                                self._cond.acquire()
                        if not my_turn():
                            self._cond.wait(timeout=poll_s)
                finally:
                    self._waiting.remove(ticket)
                self._running += 1
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


class RateLimiter:
    """At most `per_minute` events in any 60 s window, for one session (kept in that session's state)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._times: deque[float] = deque()

    def check(self) -> None:
        """Count one event, or raise `RateLimited` saying how long to wait."""
        now = self._clock()
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            wait = 60.0 - (now - self._times[0])
            raise RateLimited(f"this session has started {self.per_minute} model computations in the last minute, "
                              f"the most the server allows; try again in {wait:.0f} s")
        self._times.append(now)

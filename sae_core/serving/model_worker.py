"""Live model work in a process of its own: the app's pages ask, a worker process runs the model. A prompt being
computed then never holds the interpreter (its GIL) that runs every other visitor's browsing pages, and a model that
crashes or runs out of memory takes down the worker, not the app.

The worker is a plain child process (`python -m sae_core.serving.model_worker`) on one end of a socket pair: not a
`multiprocessing` spawn, which re-imports the parent's `__main__`, and under Streamlit that is a page script.
Messages are pickled, and read back by `read_message`, which rebuilds only what the calls exchange (containers,
tensors, the call's own dataclasses, our errors) and refuses every other class, so neither end runs code a message
names even though they pass only between the app and the child it started."""

from __future__ import annotations

import importlib
import io
import itertools
import os
import pickle
import socket
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import torch

from ..errors import UserError
from .limits import LRUCache
from .live_model import CALLS, LiveModel

_ALLOWED = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("builtins", "RuntimeError"),
    ("sae_core.interventions.prompt_activations", "PromptTokens"), ("sae_core.interventions.attribution", "Target"),
    ("sae_core.interventions.steering", "FeatureEdit"), ("sae_core.model.sites", "Site"),
}


class _MessageReader(pickle.Unpickler):
    """Unpickles the classes on `_ALLOWED` and `UserError`s of `sae_core`; a tensor's storage through
    `torch.load(weights_only=True)`; anything else is an error."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):  # pickle's own would torch.load unrestricted
            return lambda data: torch.load(io.BytesIO(data), weights_only=True)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module.split(".")[0] == "sae_core":
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type) and issubclass(found, UserError):
                return found
        raise pickle.UnpicklingError(f"a model worker message may not hold {module}.{name}")


def read_message(data: bytes) -> Any:
    """A message between the app and its model worker (see `_MessageReader` for what it may hold)."""
    return _MessageReader(io.BytesIO(data)).load()


class WorkerStopped(UserError):
    """The worker process ended while answering (killed, out of memory); the next call starts a new one."""


class ModelWorker:
    """A child process holding at most `max_live_runs` runs' models (least recently used dropped first) and answering
    `LiveModel` calls on them, `slots` model computations at once plus quick ones (tokenizing) beside them. Started on
    the first call; thread-safe; a call blocks until its answer."""

    def __init__(self, max_live_runs: int = 1, threads: int | None = None, slots: int = 1):
        self.max_live_runs, self.threads, self.slots = max_live_runs, threads, slots
        self._lock = threading.Lock()  # starting, sending, the table of calls awaiting answers
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count()

    def call(self, run: str, method: str, *args: Any) -> Any:
        """`LiveModel.open(run).<method>(*args)` in the worker (the run loaded there if it is not); raises what the
        worker raised: `UserError`s keep their message, anything else arrives as a `RuntimeError` with its traceback."""
        if method not in CALLS and method not in ("_loaded", "_is_open"):
            raise ValueError(f"the model worker answers {sorted(CALLS)}, not {method!r}")
        answer: Future = Future()
        with self._lock:
            self._start()
            key = next(self._ids)
            self._pending[key] = answer
            try:
                self._conn.send_bytes(pickle.dumps((key, run, method, args), protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                self._pending.pop(key, None)
                raise WorkerStopped("the model process stopped; ask again to start it afresh") from None
        return answer.result()

    def loaded_runs(self) -> list[str]:
        """The runs whose models the worker holds, least recently used first (none before the first call)."""
        return self.call("", "_loaded") if self._process is not None else []

    def is_open(self, run: str) -> bool:
        """Whether the worker holds the run's model now (asking never loads it)."""
        return self._process is not None and self.call(run, "_is_open")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", __name__, str(theirs.fileno()), str(self.max_live_runs), str(self.threads or 0),
                   str(self.slots)]
        process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._process, self._conn = process, Connection(ours.detach())
        threading.Thread(target=self._read, args=(process, self._conn), name="model-worker-answers", daemon=True).start()

    def _read(self, process, conn: Connection) -> None:
        """Hand each answer to its caller; when the worker ends, fail every call still waiting."""
        while True:
            try:
                key, ok, payload = read_message(conn.recv_bytes())
            except Exception:  # the worker ended (EOF), its stream broke or sent what may not be read: no answer will come
                break
            with self._lock:
                answer = self._pending.pop(key, None)
            if answer is not None:
                (answer.set_result if ok else answer.set_exception)(payload)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
        with self._lock:
            if self._process is process:
                self._process, self._conn = None, None
            waiting, self._pending = self._pending, {}
        for answer in waiting.values():
            answer.set_exception(WorkerStopped(
                f"the model process stopped (exit code {process.returncode}) while computing this, e.g. out of memory; "
                "ask again to start it afresh"))

    def close(self) -> None:
        """Stop the worker (its models are freed); a later call starts a new one."""
        with self._lock:
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if process is not None:
            conn.close()  # the worker's read ends, so it exits
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _serve(conn: Connection, max_live_runs: int, threads: int | None, slots: int) -> None:
    """The worker process: answer calls until the app closes its end of the socket."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    models: LRUCache[LiveModel] = LRUCache(max_live_runs, collect=True)
    sending = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=slots + 2, thread_name_prefix="model-call")  # + quick calls beside the jobs

    def answer(key: int, run: str, method: str, args: tuple) -> None:
        try:
            if method == "_loaded":
                ok, payload = True, [str(k) for k in models.keys()]
            elif method == "_is_open":
                ok, payload = True, run in models.keys()
            else:
                ok, payload = True, getattr(models.get(run, lambda: LiveModel.open(run)), method)(*args)
        except UserError as exc:
            ok, payload = False, exc
        except Exception:  # a bug: its traceback goes to the app, which shows it like any other
            ok, payload = False, RuntimeError(f"the model worker failed:\n{traceback.format_exc()}")
        try:
            message = pickle.dumps((key, ok, payload), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            message = pickle.dumps((key, False, RuntimeError(f"the model worker could not send its answer to {method}:\n"
                                                             f"{traceback.format_exc()}")))
        with sending:
            conn.send_bytes(message)

    while True:
        try:
            key, run, method, args = read_message(conn.recv_bytes())
        except (EOFError, OSError):
            break
        pool.submit(answer, key, run, method, args)
    os._exit(0)  # the app is gone: nobody awaits the answers still being computed


class RemoteModel:
    """A run's `LiveModel` as the app sees it: the same methods, each answered by the worker process."""

    def __init__(self, worker: ModelWorker, run: str):
        self._worker, self._run = worker, run

    def __getattr__(self, name: str):
        if name not in CALLS:
            raise AttributeError(name)
        return lambda *args: self._worker.call(self._run, name, *args)


if __name__ == "__main__":  # the worker process: FD MAX_LIVE_RUNS THREADS SLOTS, as ModelWorker._start passes them
    fd, max_runs, n_threads, n_slots = (int(a) for a in sys.argv[1:5])
    _serve(Connection(fd), max_runs, n_threads or None, n_slots)

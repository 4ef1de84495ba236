"""Shared page state: the access check, which served run a page shows, and what every session shares (feature
stores, models, the line for the model). The rules are `sae_core.serving`'s; this module applies them to Streamlit."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import streamlit as st
import torch

from sae_core.errors import UserError
from sae_core.evaluation.metrics_table import metrics_notes
from sae_core.features.annotations import Annotations, annotations_dir, read_annotations
from sae_core.features.reader import FeatureStore
from sae_core.model.sentence_embedder import SentenceEmbedder, load_embedder
from sae_core.serving import (
    AUTH_ENV,
    JobQueue,
    LRUCache,
    RateLimiter,
    RunCatalog,
    ServeSettings,
    StoreShelf,
    TokenCheck,
)
from sae_core.serving.live_model import LiveModel
from sae_core.serving.model_worker import ModelWorker, RemoteModel

from .feature_view import LINK_PARAMS, escape_markdown

T = TypeVar("T")
RESULTS_KEPT = 64
"""Live results (prompt activations, predictions, attributions) kept for every session to reuse."""
LOOKUPS_KEPT = 512
"""Feature pages and their similar features kept for every session (a link shared in a team is opened many times)."""


class Server:
    """What one app process shares between its sessions, built from the settings `sae-explorer app` passed."""

    def __init__(self, settings: ServeSettings, token: str | None):
        self.settings = settings
        self.catalog = RunCatalog(settings.runs, settings.runs_dir)
        self.access = TokenCheck(token)
        self.worker = _model_worker(settings.max_live_runs, settings.model_threads, settings.max_live_jobs)
        self.stores = StoreShelf()
        self.jobs = JobQueue(settings.max_live_jobs, settings.max_waiting_jobs)
        self.results: LRUCache[Any] = LRUCache(RESULTS_KEPT)
        self.lookups: LRUCache[Any] = LRUCache(LOOKUPS_KEPT)
        if settings.model_threads:  # the app's own torch work (similar features, query embeddings) gets the other cores
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - settings.model_threads))


@st.cache_resource(show_spinner=False)
def _model_worker(max_live_runs: int, threads: int | None, slots: int) -> ModelWorker:
    """The process that runs the models, one per set of limits (servers in one process with the same limits share it)."""
    return ModelWorker(max_live_runs, threads, slots)


@st.cache_resource(show_spinner=False)
def _server(settings_json: str, token: str | None) -> Server:
    return Server(ServeSettings(**json.loads(settings_json)), token)


def server() -> Server:
    """This process's shared state (one per set of settings, so tests with other settings get their own)."""
    settings = ServeSettings.from_env()
    return _server(json.dumps(asdict(settings)), os.environ.get(AUTH_ENV) or None)  # runs keep their order


def page_header(title: str) -> None:
    """Every page's start: the wide layout, the access check, the run its links carry, and its title."""
    st.set_page_config(page_title=f"{title} · SAE Explorer", layout="wide")
    _require_access()
    st.title(title)
    carried = {"run": current_run_name()}
    if server().access.required:
        carried["token"] = st.session_state["_token"]
    LINK_PARAMS.set(tuple(carried.items()))


def _require_access() -> None:
    """Let the page run only for a session that gave the server's token (in the URL once, or in the login box)."""
    access = server().access
    if not access.required or st.session_state.get("_token") is not None:
        return
    offered = st.query_params.get("token")
    if access.accepts(offered):
        st.session_state["_token"] = offered
        return
    st.title("SAE Explorer")
    with st.form("login"):
        typed = st.text_input("access token", type="password", help="the token this server was started with "
                              "(`sae-explorer app --auth-token`); ask whoever sent you the link")
        if st.form_submit_button("open") and typed:
            if access.accepts(typed):
                st.session_state["_token"] = typed
                st.query_params["token"] = typed  # links opened in new tabs carry it
                st.rerun()
            time.sleep(1.0)  # a wrong guess costs a second
            st.error("wrong token")
    st.stop()


def show_metric_notes(frame) -> None:
    """The notes behind n/a values and warned-about numbers of a metrics table, folded away under one line."""
    notes = metrics_notes({row["hook_name"]: row for row in frame.to_dict("records")}) if len(frame) else []
    if notes:
        with st.expander(f"{len(notes)} note(s) on these numbers: n/a values and short windows"):
            st.markdown("\n".join(f"- {note}" for note in notes))


def _no_such_run(asked: str | None) -> None:
    served = server().catalog.names()
    st.error(f"No such run: {escape_markdown(asked or '')!s}." if asked else "No run is served here.")
    if served:
        st.info("This server serves: " + ", ".join(f"[{escape_markdown(n)}](Runs?{urlencode({'run': n})})" for n in served[:20]))
    else:
        st.info("Start the app on runs: `sae-explorer app runs/demo` or `sae-explorer app --runs-dir runs`.")
    st.stop()


def _current() -> tuple[str, Path]:
    """The served run this page shows, as (name, folder): `?run=NAME` in the URL, else the one picked in this
    session, else the server's first. Anything that is not a served run's name stops the page with "no such run"."""
    catalog = server().catalog
    asked = st.query_params.get("run")
    name = asked if asked is not None else st.session_state.get("run") or catalog.default()
    path = catalog.resolve(name)
    if name is None or path is None:
        st.session_state.pop("run", None)
        _no_such_run(asked if asked is not None else name)
    st.session_state["run"] = name
    if asked != name:
        st.query_params["run"] = name  # the address bar names the run, so a copied URL opens the same one
    return name, path


def current_run_name() -> str:
    """The name of the served run this page shows (see `_current`)."""
    return _current()[0]


def current_run() -> Path:
    """The folder of the served run this page shows (see `_current`)."""
    return _current()[1]


def feature_store(run: Path) -> FeatureStore:
    """The run's features (features.duckdb, or features/ with one file per SAE), opened read-only once and shared by
    every session, reopened when they are rebuilt; a note on the page when the new files cannot be read."""
    store, problem = server().stores.open(run)
    if problem:
        st.warning(public(problem, run))
    return store


def public(message: object, run: Path) -> str:
    """A message from the core as a visitor sees it: the run's name in place of the server's folder."""
    return str(message).replace(str(run), run.name)


def shared_lookup(store: FeatureStore, what: str, args: tuple, lookup: Callable[[], T]) -> T:
    """A read of the feature store that every session shares (keyed by the open store, so a rebuilt file is read
    afresh); errors are raised, never kept."""
    return server().lookups.get((store.serial, what, args), lookup)


def open_feature_store_or_stop() -> tuple[Path, FeatureStore]:
    """The current run and its feature store; without a usable file, say how to build one and stop the page."""
    run = current_run()
    try:
        return run, feature_store(run)
    except UserError as exc:
        st.error(public(exc, run))
        st.info(f"Build it with `sae-explorer precompute {run.name}`, or pick another run on the Runs page.")
        st.stop()
        raise  # st.stop() does not return; this keeps type checkers content


@st.cache_resource(show_spinner="loading the sentence-embedding model …")
def sentence_embedder(name: str | None) -> SentenceEmbedder:
    """The model that embeds search queries (the one that embedded the run's features), loaded once."""
    return load_embedder(name)


@contextmanager
def live_job(what: str, *, counted: bool = True) -> Iterator[None]:
    """Hold the model for one computation of this session: counted against the session's rate (unless not
    `counted`), queued behind the others (the page says its place in line), shown with a spinner. Raises `UserError`
    subclasses when the session is over its rate or the line is full."""
    srv = server()
    if counted:
        st.session_state.setdefault("_rate", RateLimiter(srv.settings.jobs_per_minute)).check()
    note = st.empty()
    with srv.jobs.slot(lambda position: note.info(f"waiting for the model (position {position}) …")):
        note.empty()
        with st.spinner(f"{what} …"):
            yield


def cached_job(key: Hashable, compute: Callable[[], T], what: str) -> T:
    """A live result shared by every session: computed once (as a `live_job`), then reused while it is kept."""
    results = server().results
    found = results.peek(key)
    if found is None:
        with live_job(what):
            found = results.get(key, compute)
    return found


def live_model(run: Path) -> LiveModel:
    """The run's model and SAEs, run by the model worker process (loaded there first, as a queued job, when it does
    not hold them: it keeps the `--max-live-runs` most recently used). Its methods are `LiveModel`'s."""
    worker = server().worker
    if not worker.is_open(str(run)):
        with live_job("loading the model and SAEs", counted=False):  # once per run, bounded by the worker's LRU
            worker.call(str(run), "sites")
    return RemoteModel(worker, str(run))  # type: ignore[return-value]  # answers LiveModel's methods


def open_live_run_or_stop() -> tuple[Path, LiveModel, FeatureStore | None]:
    """The current run, its live model (or a message and a stopped page), and its feature store if built."""
    run = current_run()
    try:
        live = live_model(run)
    except UserError as exc:
        st.error(public(exc, run))
        st.stop()
        raise  # st.stop() does not return
    try:
        store = feature_store(run)
    except UserError:
        store = None
    return run, live, store


def prompt_chars() -> int:
    """The most characters a prompt box takes: enough for the token cap in any language."""
    return 16 * server().settings.max_prompt_tokens


def max_prompt_tokens() -> int:
    return server().settings.max_prompt_tokens


def max_new_tokens() -> int:
    return server().settings.max_new_tokens


def live_activations(run: Path, live: LiveModel, text: str, chat: bool, shorts: tuple[str, ...]):
    """`(tokens, truncated_from, {short: (T, d_sae) activations})` of the run's SAEs `shorts` on a prompt (`live`: the
    run's `live_model`), shared by every session; raises `UserError` for an empty prompt, a busy server or a session
    over its rate."""
    prompt = live.tokenize(text, chat, max_prompt_tokens())

    def compute():
        return prompt.tokens, prompt.truncated_from, live.activations(prompt, shorts)

    return cached_job(("activations", str(run), tuple(prompt.ids.tolist()), shorts), compute, "running the model")


@st.cache_data(show_spinner=False, max_entries=64)
def _annotations(run: str, stamp: tuple) -> tuple[list[Annotations], list[str]]:
    return read_annotations(run)


def run_annotations(run: Path) -> tuple[list[Annotations], list[str]]:
    """Every producer's annotations of the run (notes, tags, lists, presets) and the files that could not be read,
    re-read whenever an annotation file changes."""
    folder = annotations_dir(run)
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in folder.glob("*.json"))) if folder.is_dir() else ()
    return _annotations(str(run), stamp)



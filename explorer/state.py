"""Shared page state: which run the app shows and its cached feature store (Streamlit resources live here)."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from sae_core.embedder import SentenceEmbedder, load_embedder
from sae_core.errors import UserError
from sae_core.features.parts import store_path, store_stamp
from sae_core.features.reader import FeatureStore
from sae_core.prompt_features import prompt_activations, tokenize_prompt
from sae_core.refusal.results import FEATURES_FILE, refusal_dir, refusal_marks
from sae_core.report import metrics_notes
from sae_core.run_saes import RunSAEs, open_run_saes
from sae_core.runs import APP_RUN_ENV

RUN_ENV = APP_RUN_ENV
"""`sae-explorer app RUN` passes the run folder to the app in this environment variable."""


def page_header(title: str) -> None:
    """Every page's start: the wide layout (heatmaps and side-by-side tables need the room) and its title."""
    st.set_page_config(page_title=f"{title} · SAE Explorer", layout="wide")
    st.title(title)


def show_metric_notes(frame) -> None:
    """The notes behind n/a values and warned-about numbers of a metrics table, folded away under one line."""
    notes = metrics_notes({row["hook_name"]: row for row in frame.to_dict("records")}) if len(frame) else []
    if notes:
        with st.expander(f"{len(notes)} note(s) on these numbers: n/a values and short windows"):
            st.markdown("\n".join(f"- {note}" for note in notes))


def current_run() -> Path:
    """The run folder: `?run=PATH` in the URL, else the one picked on the Runs page, else the one
    `sae-explorer app` was started with, else runs/demo."""
    return Path(st.query_params.get("run") or st.session_state.get("run") or os.environ.get(RUN_ENV) or "runs/demo")


@st.cache_resource(show_spinner="opening the feature file …")
def _store(path: str, stamp: tuple[tuple[str, int], ...]) -> FeatureStore:
    return FeatureStore(path)


def feature_store(run: Path) -> FeatureStore:
    """The run's features (features.duckdb, or features/ with one file per SAE), opened read-only once per version
    (reopened when they are rebuilt)."""
    path = store_path(run)
    return _store(str(path), store_stamp(path))


def open_feature_store_or_stop() -> tuple[Path, FeatureStore]:
    """The current run and its feature store; without a usable file, say how to build one and stop the page."""
    run = current_run()
    try:
        return run, feature_store(run)
    except UserError as exc:
        st.error(f"{exc}")
        st.info(f"Build it with `sae-explorer precompute {run}`, or open another run with `?run=PATH` in the URL.")
        st.stop()
        raise  # st.stop() does not return; this keeps type checkers content


@st.cache_resource(show_spinner="loading the sentence-embedding model …")
def sentence_embedder(name: str | None) -> SentenceEmbedder:
    """The model that embeds search queries (the one that embedded the run's features), loaded once."""
    return load_embedder(name)


@st.cache_resource(show_spinner="loading the model and SAEs …")
def _run_saes(run: str) -> RunSAEs:
    return open_run_saes(run, log=lambda message: None)


def run_saes(run: Path) -> RunSAEs:
    """The run's model and SAEs, loaded once per run and kept (live pages share them)."""
    return _run_saes(str(run))


def open_live_run_or_stop() -> tuple[Path, RunSAEs, FeatureStore | None]:
    """The current run, its model and SAEs (or a message and a stopped page), and its feature store if built."""
    run = current_run()
    try:
        opened = run_saes(run)
    except UserError as exc:
        st.error(str(exc))
        st.stop()
        raise  # st.stop() does not return
    try:
        store = feature_store(run)
    except UserError:
        store = None
    return run, opened, store


@st.cache_data(show_spinner="running the model …", max_entries=32)
def live_activations(run: str, text: str, chat: bool, shorts: tuple[str, ...]):
    """`(tokens, truncated_from, {short: (T, d_sae) activations})` of the run's SAEs `shorts` on a prompt, cached
    per prompt; raises `UserError` for an empty prompt."""
    opened = _run_saes(run)
    sites = {site.short: site for site in opened.saes}
    prompt = tokenize_prompt(opened.loaded, text, chat=chat)
    acts = prompt_activations(opened.loaded, {sites[s]: opened.saes[sites[s]] for s in shorts}, prompt)
    return prompt.tokens, prompt.truncated_from, {site.short: a for site, a in acts.items()}


@st.cache_data(show_spinner=False)
def _marks(run: str, mtime: float) -> dict[tuple[str, int], str]:
    return refusal_marks(run)


def refusal_notes(run: Path) -> dict[tuple[str, int], str]:
    """(SAE, feature) → its refusal-study note, re-read when the study's features.json changes."""
    path = refusal_dir(run) / FEATURES_FILE
    return _marks(str(run), path.stat().st_mtime if path.is_file() else 0.0)

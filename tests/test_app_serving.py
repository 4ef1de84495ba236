"""The app as a shared server (Streamlit AppTest): URLs name runs, never paths; the token guards every page; live
work waits in line, within a session's rate and the prompt caps; browsing pages never need the model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers import serve
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["../imported", "/etc", "..%2Fimported", "%2e%2e", "imported/../imported", "imported\x00", "imported/"]


def _at(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


@pytest.fixture()
def outside_run(tmp_path_factory, precomputed_run) -> Path:
    """A symlink under the served root that points at a run outside it."""
    root = tmp_path_factory.mktemp("served-root")
    (root / "escape").symlink_to(precomputed_run, target_is_directory=True)
    return root


@pytest.mark.parametrize("name", HOSTILE + ["absolute"])
def test_a_path_in_the_url_is_no_such_run(monkeypatch, precomputed_run, name):
    serve(monkeypatch, runs={"demo": str(precomputed_run)})
    name = str(precomputed_run) if name == "absolute" else name
    for page in ("2_Features.py", "3_Prompt.py", "1_Runs.py"):
        at = _at(page, run=name, sae="L1M", feature="1")
        assert not at.exception
        assert at.error and at.error[0].value.startswith("No such run"), page
        assert not at.dataframe and not at.get("plotly_chart")  # nothing of any run was shown
        assert str(precomputed_run) not in "".join(e.value for e in [*at.error, *at.info])


def test_a_symlink_out_of_the_root_is_not_served(monkeypatch, outside_run):
    serve(monkeypatch, runs_dir=str(outside_run))
    at = _at("2_Features.py", run="escape")
    assert not at.exception and at.error[0].value.startswith("No such run")
    assert "No run is served here" in _at("2_Features.py").error[0].value


def test_a_served_run_is_named_in_the_url_and_in_every_link(monkeypatch, precomputed_run):
    serve(monkeypatch, runs={"first": str(precomputed_run), "demo": str(precomputed_run)})
    at = _at("2_Features.py", run="demo")
    assert not at.exception and at.query_params["run"] in ("demo", ["demo"])
    assert all(link.endswith("&run=demo") for link in at.dataframe[0].value["feature"])
    at = _at("2_Features.py")  # no run in the URL: the first one served, and the URL says so
    assert not at.exception and at.query_params["run"] in ("first", ["first"])


def test_every_page_asks_for_the_token(monkeypatch, precomputed_run):
    serve(monkeypatch, token="s3cret", runs={"demo": str(precomputed_run)})
    for page in ("1_Runs.py", "2_Features.py", "3_Prompt.py", "4_Layers.py", "5_Attribution.py", "6_Steering.py"):
        for params in ({}, {"token": "wrong"}):
            at = _at(page, **params)
            assert not at.exception and [t.label for t in at.text_input] == ["access token"], page
            assert not at.dataframe and not at.get("plotly_chart") and not at.text_area, page
    at = _at("2_Features.py", token="s3cret")
    assert not at.exception and at.dataframe
    assert all("&token=s3cret" in link for link in at.dataframe[0].value["feature"])  # new tabs stay let in
    at = _at("2_Features.py")
    at.text_input[0].set_value("nope")
    at.button[0].click().run()
    assert "wrong token" in at.error[0].value and not at.dataframe
    at.text_input[0].set_value("s3cret")
    at.button[0].click().run()
    assert not at.exception and at.dataframe and at.query_params["token"] in ("s3cret", ["s3cret"])


def test_a_busy_model_or_a_spent_rate_is_a_message_and_browsing_goes_on(monkeypatch, precomputed_run):
    from explorer.state import server

    serve(monkeypatch, runs={"demo": str(precomputed_run)}, max_waiting_jobs=0, jobs_per_minute=1)
    at = _at("3_Prompt.py")  # loads the model (not counted) and runs the default prompt: the session's one job
    assert not at.exception and at.get("plotly_chart")
    at.text_area[0].set_value("Another prompt entirely.")
    at.button[0].click().run()
    assert not at.exception and "model computations in the last minute" in at.error[0].value
    queue = server().jobs
    with queue.slot():  # someone else holds the model and nobody may wait
        fresh = _at("3_Prompt.py")
        fresh.text_area[0].set_value("A third prompt.")
        fresh.button[0].click().run()
        assert not fresh.exception and "the model is busy" in fresh.error[0].value
        browsing = _at("2_Features.py", sae="L1M", feature="1")  # feature pages need no model
        assert not browsing.exception and browsing.subheader[0].value == "L1M · feature 1"


def test_a_waiting_session_is_told_its_place_and_then_served(monkeypatch, precomputed_run):
    from explorer.state import server

    serve(monkeypatch, runs={"demo": str(precomputed_run)}, max_waiting_jobs=4)
    _at("3_Prompt.py")  # the model is loaded
    queue, held, shown = server().jobs, threading.Event(), []
    release = threading.Event()

    def hold():
        with queue.slot():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    import streamlit.delta_generator as dg

    real_info = dg.DeltaGenerator.info

    def spy(self, body, *args, **kwargs):
        if "waiting for the model" in str(body):
            shown.append(str(body))
            release.set()  # the holder finishes once the waiting message is drawn
        return real_info(self, body, *args, **kwargs)

    monkeypatch.setattr(dg.DeltaGenerator, "info", spy)
    at = AppTest.from_file(str(ROOT / "pages" / "3_Prompt.py"), default_timeout=120).run()
    at.text_area[0].set_value("A prompt nobody ran yet.")
    at.button[0].click().run()
    holder.join()
    assert shown and shown[0] == "waiting for the model (position 1) …"
    assert not at.exception and at.get("plotly_chart")


def test_prompts_and_answers_are_capped(monkeypatch, precomputed_run):
    serve(monkeypatch, runs={"demo": str(precomputed_run)}, max_prompt_tokens=6, max_new_tokens=16)
    at = _at("3_Prompt.py")
    assert not at.exception and "only the first 6 are shown" in at.warning[0].value
    assert at.text_area[0].max_chars == 16 * 6
    steering = _at("6_Steering.py")
    assert not steering.exception
    assert [s.max for s in steering.slider if s.label == "new tokens"] == [16]
    steering.text_input[0].set_value(", ".join(["1"] * 9))
    steering.button[1].click().run()
    assert "at most 8 strengths" in steering.error[0].value


def test_the_models_in_memory_are_bounded(monkeypatch, precomputed_run, tmp_path):
    import shutil

    from explorer.state import server

    second = tmp_path / "second"
    shutil.copytree(precomputed_run, second)
    serve(monkeypatch, runs={"demo": str(precomputed_run), "second": str(second)}, max_live_runs=1)
    assert not _at("3_Prompt.py", run="demo").exception
    assert server().worker.loaded_runs() == [str(precomputed_run.resolve())]
    assert not _at("3_Prompt.py", run="second").exception
    assert server().worker.loaded_runs() == [str(second.resolve())]  # the first run's model was dropped


def test_a_killed_model_process_is_started_again_by_the_next_prompt(monkeypatch, precomputed_run):
    import os
    import signal
    import time

    from explorer.state import server

    serve(monkeypatch, runs={"demo": str(precomputed_run)}, jobs_per_minute=100)
    at = _at("3_Prompt.py")
    worker = server().worker
    first = worker.pid
    assert not at.exception and first is not None and first != os.getpid()  # the model runs beside the app
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while worker.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _at("2_Features.py", sae="L1M", feature="1").exception  # browsing never needed it
    at.text_area[0].set_value("A prompt after the crash.")
    at.button[0].click().run()
    assert not at.exception and at.get("plotly_chart") and worker.pid not in (None, first)

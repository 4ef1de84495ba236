"""The Steering page (Streamlit AppTest) on the tiny precomputed run."""

from __future__ import annotations

from pathlib import Path

from helpers import app_page
from streamlit.testing.v1 import AppTest


def _page(monkeypatch, run: Path, **params) -> AppTest:
    return app_page(monkeypatch, "6_Steering.py", run, timeout=120, **params).run()


def test_steering_changes_the_answer(monkeypatch, precomputed_run):
    at = _page(monkeypatch, precomputed_run, sae="L1M", feature="3")
    assert not at.exception
    assert at.selectbox[0].value == "L1M" and at.number_input[1].value == 3
    at.checkbox[0].set_value(False)
    at.number_input[2].set_value(50.0)
    at.slider[0].set_value(12)
    at.button[0].click().run()
    assert not at.exception
    plain, steered = (m.value for m in at.markdown[-2:])
    assert plain != steered


def test_steering_bad_input_shows_a_message(monkeypatch, precomputed_run):
    at = _page(monkeypatch, precomputed_run)
    at.number_input[1].set_value(999)
    at.button[0].click().run()
    assert not at.exception and "has no feature 999" in at.error[0].value

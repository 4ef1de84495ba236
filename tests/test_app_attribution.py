"""The Attribution page (Streamlit AppTest) on the tiny precomputed run."""

from __future__ import annotations

from pathlib import Path

from helpers import app_page
from streamlit.testing.v1 import AppTest

TEXT = "the river city music science history ocean language learning light"


def _page(monkeypatch, run: Path) -> AppTest:
    at = app_page(monkeypatch, "5_Attribution.py", run).run()
    at.text_area[0].set_value(TEXT).run()
    return at


def test_attribution_table_and_ablation_move_the_target(monkeypatch, precomputed_run):
    at = _page(monkeypatch, precomputed_run)
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) > 0 and table["attribution"].abs().is_monotonic_decreasing
    before = float(at.metric[0].value)
    at.number_input[0].set_value(1)
    at.button[0].click().run()
    assert not at.exception
    after = float(at.metric[1].value)
    assert after != before


def test_attribution_page_explains_bad_input(monkeypatch, precomputed_run):
    at = _page(monkeypatch, precomputed_run)
    at.text_input[0].set_value("river city music").run()
    assert not at.exception and "give exactly one token" in at.error[0].value
    at.text_input[0].set_value("#99999999").run()
    assert not at.exception and "outside the vocabulary" in at.error[0].value
    at.text_area[0].set_value("").run()
    assert not at.exception and "the prompt is empty" in at.error[0].value

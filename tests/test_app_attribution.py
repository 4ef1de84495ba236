"""The Attribution page (Streamlit AppTest) on the tiny precomputed run."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer.state import RUN_ENV

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the river city music science history ocean language learning light"


def _page(monkeypatch, run: Path) -> AppTest:
    monkeypatch.setenv(RUN_ENV, str(run))
    at = AppTest.from_file(str(ROOT / "pages" / "5_Attribution.py"), default_timeout=60).run()
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

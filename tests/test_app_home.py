"""The app's entry point: a landing page that says what each page is for, linking to each with the run carried."""

from __future__ import annotations

from pathlib import Path

from helpers import serve
from streamlit.testing.v1 import AppTest

from explorer.navigation import HOME, PAGES

ROOT = Path(__file__).resolve().parents[1]


def test_landing_page_lists_every_page_with_the_run_and_opens_them(monkeypatch, precomputed_run):
    serve(monkeypatch, runs={precomputed_run.name: str(precomputed_run)})
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=60).run()
    assert not at.exception and at.title[0].value == "SAE Explorer"
    links = at.get("page_link")
    assert [link.proto.label for link in links] == [page.title for page in PAGES]
    assert all(link.proto.query_string == f"run={precomputed_run.name}" for link in links)
    assert [c.value for c in at.caption] == [page.what for page in PAGES]
    at.switch_page(PAGES[1].path).run()
    assert not at.exception and at.title[0].value == "Features"


def test_navigation_names_every_page_script():
    scripts = {path.name for path in (ROOT / "pages").glob("*.py") if path.name != "__init__.py"}
    assert scripts == {page.script for page in (HOME, *PAGES)}
    assert all(Path(page.path).is_file() for page in (HOME, *PAGES))

"""The real app in headless Chromium: every page opens, a search works, a deep link opens a feature, a prompt renders.

Needs Debian's `chromium` (`apt-get install -y chromium`, done by .ci/run) and Playwright's Python API;
skipped without them on a user's machine, never in CI (CI=true). Screenshots go to tests/output/screenshots/.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from explorer.serve import running_app, wait_until_rendered

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "tests" / "output" / "screenshots"
PAGES = ["Runs", "Features", "Prompt", "Layers", "Attribution", "Steering"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or importlib.util.find_spec("playwright") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs chromium (apt-get install -y chromium) and playwright (pip install playwright)")
        pytest.skip("headless browser test needs Debian's chromium and the playwright package")
    return path


@pytest.fixture(scope="module")
def app_url(precomputed_run):
    chromium = _chromium()
    with running_app(precomputed_run) as url:
        yield url, chromium


def _open(page, url: str, name: str) -> None:
    page.goto(url)
    wait_until_rendered(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0, f"Streamlit exception on {name}"


def test_every_page_in_a_real_browser(app_url):
    from playwright.sync_api import sync_playwright

    url, chromium = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in PAGES:
            _open(page, f"{url}/{name}", name.lower())
        _open(page, f"{url}/Features?sae=L1M&feature=1", "feature-deep-link")
        assert page.get_by_text("L1M · feature 1").count() == 1
        _open(page, f"{url}/Features", "features-search")
        page.get_by_label("query").fill("dead")
        page.keyboard.press("Enter")
        page.wait_for_timeout(2000)
        assert page.locator("[data-testid='stException']").count() == 0
        _open(page, f"{url}/Prompt", "prompt")
        page.get_by_role("button", name="show activations").click()
        page.wait_for_timeout(3000)
        assert page.locator("[data-testid='stException']").count() == 0
        assert page.locator(".js-plotly-plot").count() >= 1
        page.screenshot(path=str(SHOTS / "prompt-submitted.png"), full_page=True)
        browser.close()

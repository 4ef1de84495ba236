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


def test_a_path_in_the_url_is_no_such_run_in_a_real_browser(app_url, precomputed_run):
    from playwright.sync_api import sync_playwright

    url, chromium = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in ["..%2F..%2Fetc", "%2Fetc", str(precomputed_run), "imported%00", "imported%2F..%2Fimported"]:
            page.goto(f"{url}/Features?run={name}&sae=L1M&feature=1")
            wait_until_rendered(page)
            assert page.get_by_text("No such run").count() == 1, name
            assert page.get_by_text("L1M · feature 1").count() == 0
            content = page.content()  # the name asked for may be echoed; nothing about the server's files is
            assert "does not exist" not in content and "features.duckdb" not in content
        browser.close()


def test_a_shared_server_asks_for_its_token(precomputed_run):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    env = {**os.environ, "SAE_EXPLORER_AUTH_TOKEN": "s3cret-token"}
    with running_app(precomputed_run, env=env) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/Features?sae=L1M&feature=1")
        wait_until_rendered(page)
        assert page.get_by_role("textbox", name="access token").count() == 1 and page.get_by_text("L1M · feature 1").count() == 0
        page.get_by_role("textbox", name="access token").fill("s3cret-token")
        page.get_by_role("button", name="open").click()
        page.wait_for_selector("text=L1M · feature 1", timeout=60_000)
        assert "token=s3cret-token" in page.url  # a reload or a link opened in a new tab stays let in
        assert page.locator("[data-testid='stToolbar'] [data-testid='stAppDeployButton']").count() == 0
        browser.close()

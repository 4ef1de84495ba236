"""The real app in headless Chromium: every page opens, a search works, a deep link opens a feature, a prompt renders,
a circuit node clicked opens its feature.

Needs Debian's `chromium` (`apt-get install -y chromium`, done by .ci/run) and Playwright's Python API;
skipped without them on a user's machine, never in CI (CI=true). Screenshots go to tests/output/screenshots/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import chromium_or_skip

from sae_core.testing.app_server import running_app, wait_until_rendered

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "tests" / "output" / "screenshots"
PAGES = ["Runs", "Features", "Prompt", "Layers", "Attribution", "Steering"]


@pytest.fixture(scope="module")
def app_url(precomputed_run):
    chromium = chromium_or_skip()
    with running_app(precomputed_run) as url:
        yield url, chromium


HEATMAPS = """() => JSON.stringify([...document.querySelectorAll('.js-plotly-plot')]
  .filter(gd => gd.offsetParent !== null).map(gd => (gd.data || []).map(trace => trace.y)))"""


def _open(page, url: str, name: str, heading: str | None = None) -> None:
    page.goto(url)
    wait_until_rendered(page, heading or name)
    _check(page, name)


def _check(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0, f"Streamlit exception on {name}"


def test_every_page_in_a_real_browser(app_url):
    from playwright.sync_api import sync_playwright

    url, chromium = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _open(page, url, "home", "SAE Explorer")
        assert page.get_by_role("link", name="Features").count() >= 1  # the landing page links every page
        for name in PAGES:
            _open(page, f"{url}/{name}", name)
        _open(page, f"{url}/Features?sae=L1M&feature=1", "feature-deep-link", "Features")
        page.wait_for_selector("text=L1M · feature 1")

        _open(page, f"{url}/Features", "features-search", "Features")
        page.get_by_text("label or explanation", exact=True).click()
        box = page.get_by_placeholder("e.g. department")  # the query box of that mode
        box.wait_for()
        page.wait_for_function("() => document.querySelectorAll('input[aria-label=\"query\"]').length === 1")
        wait_until_rendered(page, "Features")
        box.fill("dead")
        page.keyboard.press("Enter")
        found = page.wait_for_selector("text=/[0-9]+ feature\\(s\\) found/", timeout=60_000)
        wait_until_rendered(page, "Features")
        assert int(found.text_content().split()[0]) > 0, found.text_content()  # the tiny run has dead features
        page.wait_for_selector("[data-testid='stDataFrame'] canvas")
        _check(page, "features-search-dead")

        _open(page, f"{url}/Prompt", "Prompt")
        page.wait_for_selector(".js-plotly-plot")  # the default prompt's heatmap
        before = page.evaluate(HEATMAPS)
        page.get_by_role("textbox", name="prompt").fill("A different prompt about rivers and bread.")
        page.get_by_role("button", name="show activations").click()
        page.wait_for_function(f"(before) => ({HEATMAPS})() !== before", arg=before, timeout=120_000)  # the click drew new ones
        wait_until_rendered(page, "Prompt")
        _check(page, "prompt-submitted")
        browser.close()


NODE_XY = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  const layout = gd._fullLayout, box = gd.getBoundingClientRect();
  const pixels = t => t.x.map((x, i) => [box.left + layout._size.l + layout.xaxis.l2p(x),
                                         box.top + layout._size.t + layout.yaxis.l2p(t.y[i])]);
  const trace = gd.data.find(t => t.name === 'features');
  const xy = pixels(trace);
  // every other node, error terms too (the features trace is drawn first, so feature i is all[i])
  const all = gd.data.filter(t => t.mode === 'markers').flatMap(pixels);
  // nodes of one site and token share a cell and may overlap: take the one farthest from any other node, so a
  // click on its centre cannot land on another
  const room = xy.map(([x, y], i) => Math.min(...all.filter((_, j) => j !== i).map(([u, v]) => Math.hypot(u - x, v - y)), Infinity));
  const best = room.indexOf(Math.max(...room));
  return [xy[best][0], xy[best][1], trace.customdata[best]];
}"""


def test_clicking_a_circuit_node_opens_its_feature(app_url):
    from playwright.sync_api import sync_playwright

    url, chromium = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _open(page, f"{url}/Circuits", "Circuits")
        plot = page.locator(".js-plotly-plot").first
        plot.wait_for(timeout=120_000)
        wait_until_rendered(page, "Circuits")
        plot.scroll_into_view_if_needed()
        x, y, node = page.evaluate(NODE_XY)
        site, _, feature = node.split("/")
        page.mouse.click(x, y)
        page.wait_for_function("() => location.pathname.endsWith('/Features')", timeout=60_000)
        wait_until_rendered(page, "Features")
        page.wait_for_selector(f"text={site} · feature {feature}")
        _check(page, "circuit-node-clicked")
        browser.close()


def test_a_path_in_the_url_is_no_such_run_in_a_real_browser(app_url, precomputed_run):
    from playwright.sync_api import sync_playwright

    url, chromium = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in ["..%2F..%2Fetc", "%2Fetc", str(precomputed_run), "imported%00", "imported%2F..%2Fimported"]:
            page.goto(f"{url}/Features?run={name}&sae=L1M&feature=1")
            wait_until_rendered(page, "Features")
            assert page.get_by_text("No such run").count() == 1, name
            assert page.get_by_text("L1M · feature 1").count() == 0
            content = page.content()  # the name asked for may be echoed; nothing about the server's files is
            assert "does not exist" not in content and "features.duckdb" not in content
        browser.close()


def test_a_shared_server_asks_for_its_token(precomputed_run):
    from playwright.sync_api import sync_playwright

    chromium = chromium_or_skip()
    env = {**os.environ, "SAE_EXPLORER_AUTH_TOKEN": "s3cret-token"}
    with running_app(precomputed_run, env=env) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/Features?sae=L1M&feature=1")
        wait_until_rendered(page, "SAE Explorer")  # the login page's title
        box = page.get_by_role("textbox", name="access token")
        box.wait_for()  # widgets are drawn a moment after the script ends
        assert page.get_by_text("L1M · feature 1").count() == 0
        box.fill("s3cret-token")
        page.get_by_role("button", name="open").click()
        page.wait_for_selector("text=L1M · feature 1", timeout=60_000)
        assert "token=s3cret-token" in page.url  # a reload or a link opened in a new tab stays let in
        assert page.locator("[data-testid='stToolbar'] [data-testid='stAppDeployButton']").count() == 0
        browser.close()

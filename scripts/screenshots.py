"""Screenshots of every page of the app on a run, for the README (needs chromium and playwright).

    python scripts/screenshots.py runs/demo docs/screenshots [NAME ...]   # NAMEs: only those pages (e.g. circuits)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from sae_core.features.reader import FeatureStore
from sae_core.features.schema import DB_FILE
from sae_core.testing.app_server import running_app, wait_until_rendered

PAGES = {"runs": "Runs", "features": "Features", "feature": "Features?sae={sae}&feature={feature}", "prompt": "Prompt",
         "layers": "Layers", "attribution": "Attribution", "steering": "Steering?sae={sae}&feature={feature}",
         "circuits": "Circuits"}
MEANING_QUERY = "legal documents"


def showcase_feature(run: str) -> tuple[str, int]:
    """A feature worth a screenshot: the explained one with the best embedding score, else the strongest one of
    the residual-stream SAE nearest the middle layer that fires on 0.2–2% of tokens."""
    with FeatureStore(Path(run) / DB_FILE) as store:
        explained = store.list_features(explained_only=True, sort_by="embedding", limit=1)
        if len(explained):
            return str(explained["sae"].iloc[0]), int(explained["feature"].iloc[0])
        saes = store.saes()
        residual = saes[saes.site == "resid_post"] if (saes.site == "resid_post").any() else saes
        middle = (saes.layer.min() + saes.layer.max()) / 2
        sae = str(residual.loc[(residual.layer - middle).abs().idxmin(), "short_name"])
        found = store.list_features(saes=[store.sae_id(sae)], min_density=0.002, max_density=0.02, sort_by="max_act",
                                    limit=1)
    return sae, int(found["feature"].iloc[0]) if len(found) else 0


def main(run: str, out: str, *only: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    sae, feature = showcase_feature(run)
    with running_app(run) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, path in PAGES.items():
            if only and name not in only:
                continue
            page.goto(f"{url}/{path.format(sae=sae, feature=feature)}")
            wait_until_rendered(page, timeout_ms=180_000)
            page.screenshot(path=f"{out}/{name}.png")
            print(f"{out}/{name}.png")
            if name == "features":  # search by meaning
                page.get_by_label("query").fill(MEANING_QUERY)
                page.keyboard.press("Enter")
                wait_until_rendered(page, timeout_ms=180_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=f"{out}/meaning.png")
                print(f"{out}/meaning.png")
            if name == "steering":  # with the answers
                page.get_by_role("button", name="generate").click()
                wait_until_rendered(page, timeout_ms=180_000)
                page.locator("h1").first.evaluate("e => e.scrollIntoView({block: 'start'})")
                page.mouse.wheel(0, 400)
                page.wait_for_timeout(500)
                page.screenshot(path=f"{out}/{name}.png")
            if name == "circuits":  # the graph, once the circuit is found
                page.locator("[data-testid=stPlotlyChart]").first.wait_for(timeout=180_000)
                wait_until_rendered(page, timeout_ms=180_000)
                page.locator("[data-testid=stPlotlyChart]").first.evaluate("e => e.scrollIntoView({block: 'center'})")
                page.wait_for_timeout(500)
                page.screenshot(path=f"{out}/{name}.png")
            if name == "layers":  # the same page again, with its prompt compared across layers
                page.get_by_role("button", name="compare across layers").click()
                wait_until_rendered(page, timeout_ms=180_000)
                page.locator("[data-testid=stPlotlyChart]").last.evaluate("e => e.scrollIntoView({block: 'start'})")
                page.screenshot(path=f"{out}/layers-prompt.png")
                print(f"{out}/layers-prompt.png")
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Screenshots of every page of the app on a run, for the README (needs chromium and playwright).

    python scripts/screenshots.py runs/demo docs/screenshots
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from explorer.serve import running_app, wait_until_rendered

PAGES = {"runs": "Runs", "features": "Features", "feature": "Features?sae=L14R&feature={feature}", "prompt": "Prompt",
         "layers": "Layers", "attribution": "Attribution", "steering": "Steering?sae=L14R&feature={feature}"}


def main(run: str, out: str, feature: int = 5) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    with running_app(run) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, path in PAGES.items():
            page.goto(f"{url}/{path.format(feature=feature)}")
            wait_until_rendered(page, timeout_ms=180_000)
            page.screenshot(path=f"{out}/{name}.png")
            print(f"{out}/{name}.png")
            if name == "layers":  # the same page again, with its prompt compared across layers
                page.get_by_role("button", name="compare across layers").click()
                wait_until_rendered(page, timeout_ms=180_000)
                page.locator("[data-testid=stPlotlyChart]").last.evaluate("e => e.scrollIntoView({block: 'start'})")
                page.screenshot(path=f"{out}/layers-prompt.png")
                print(f"{out}/layers-prompt.png")
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])

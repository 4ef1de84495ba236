"""PNG copies of a refusal report's charts, for the README (needs chromium and playwright).

    python scripts/report_charts.py runs/demo/refusal/report.html docs/refusal
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

NAMES = ["refusal-rate", "perplexity", "answer-length", "ablation"]


def main(report: str, out: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_selector(".plotly-graph-div")
        page.wait_for_timeout(1000)
        for name, chart in zip(NAMES, page.locator(".plotly-graph-div").all()):
            chart.screenshot(path=f"{out}/{name}.png")
            print(f"{out}/{name}.png")
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Screenshots of every page of the app on a run, for the README (needs chromium and playwright).

    python scripts/screenshots.py runs/demo docs/screenshots
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"runs": "Runs", "features": "Features", "feature": "Features?sae=L14R&feature={feature}", "prompt": "Prompt",
         "layers": "Layers", "attribution": "Attribution", "steering": "Steering?sae=L14R&feature={feature}"}


def main(run: str, out: str, feature: int = 5) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sae_core.cli", "app", run, "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        Path(out).mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name, path in PAGES.items():
                page.goto(f"{url}/{path.format(feature=feature)}")
                page.wait_for_selector("h1", timeout=120_000)
                page.wait_for_timeout(2000)
                page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
                page.wait_for_timeout(1000)
                page.screenshot(path=f"{out}/{name}.png")
                print(f"{out}/{name}.png")
            browser.close()
    finally:
        proc.terminate()


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Run the real app in a subprocess (for the browser test and the README screenshots) and wait for pages to render.

No Streamlit or Playwright import here: `running_app` starts `sae-explorer app`, `wait_until_rendered`
takes a Playwright page.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(*args: str | Path, timeout_s: float = 60.0, env: dict[str, str] | None = None,
                root: Path = ROOT, command: list[str] | None = None) -> Iterator[str]:
    """`sae-explorer app ARGS…` (runs and options) on a free port, from the checkout at `root` (or as `command`, e.g.
    an installed `sae-explorer` script); yields its URL once it answers, stops it afterwards."""
    port = free_port()
    command = command or [sys.executable, "-m", "sae_core.cli"]
    proc = subprocess.Popen([*command, "app", *map(str, args), "--port", str(port)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    raise RuntimeError(f"the app did not start: {output[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


RENDERED = """(heading) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.dataset.testScriptState !== 'notRunning') return false;           // the script has finished
  if (app.dataset.testConnectionState !== 'CONNECTED') return false;
  if (document.querySelector('[data-stale="true"]')) return false;                  // nothing left of a former run
  const titles = [...document.querySelectorAll('h1')].map(e => e.textContent);
  return heading ? titles.some(t => t.includes(heading)) : titles.length > 0;
}"""


def wait_until_rendered(page: Any, heading: str | None = None, timeout_ms: int = 120_000) -> None:
    """Wait until a Streamlit page has finished its script run and drawn its title (containing `heading` if given);
    no fixed sleeps: it reads the script state the Streamlit frontend publishes on its root element."""
    page.wait_for_function(RENDERED, arg=heading, timeout=timeout_ms, polling=50)

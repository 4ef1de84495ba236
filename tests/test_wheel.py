"""The wheel is the product: built from the tracked files, installed into a fresh virtual environment outside the
checkout, it trains on its own default corpus, precomputes, and serves the app to a drawn page.

The fresh environment gets its dependencies (torch, transformers, streamlit …) from this test's environment through
a path file, so nothing is downloaded; sae-explorer itself comes only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import chromium_or_skip

from sae_core.testing.app_server import running_app, wait_until_rendered

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs on a git clone: the wheel test needs git to list the tracked files")
        pytest.skip("building the wheel from tracked files needs git and a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from the checkout's tracked files only (what a clean clone has)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in tracked_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src, cwd=src)
    (found,) = dist.glob("sae_explorer-*.whl")
    return found


def test_wheel_holds_every_module_the_app_and_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = tracked_files()
    expected = {name for name in tracked if name.startswith(("sae_core/", "explorer/")) and name.endswith(".py")}
    expected |= {"explorer/" + name for name in tracked if name.startswith("pages/") and name.endswith(".py")}
    expected |= {"sae_core/" + name for name in tracked if name.startswith("data/")}
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing[:10]}: list the package in pyproject.toml [tool.setuptools]"


def test_installed_wheel_trains_precomputes_and_serves_outside_the_checkout(wheel, tmp_path, tiny_model_dir):
    chromium = chromium_or_skip()
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # deps, not their .pth files
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SAE_EXPLORER_DATA")}
    where = _run(python, "-c", "import sae_core, explorer; print(sae_core.__file__, explorer.__file__)", cwd=tmp_path, env=env)
    assert str(ROOT) not in where and str(site) in where, where  # the wheel's copy, not the checkout's

    script = venv / "bin" / "sae-explorer"
    run = tmp_path / "runs" / "wheel-run"
    _run(script, "train", "--model", tiny_model_dir, "--sites", "L1R", "--k", "4", "--expansion", "2",
         "--tokens", "2k", "--batch-size", "256", "--context-size", "32", "--lm-batch-size", "4", "--chunk-tokens", "1k",
         "--eval-tokens", "1k", "--ce-tokens", "256", "--threads", "1", "--out", run, cwd=tmp_path, env=env)
    assert "default corpus" in (run / "run.json").read_text()  # read from the wheel's own data
    _run(script, "precompute", run, "--tokens", "2k", "--no-embed", cwd=tmp_path, env=env)
    assert (run / "features.duckdb").is_file()

    from playwright.sync_api import sync_playwright

    with running_app(run, command=[str(script)], root=tmp_path, env=env) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/Features")
        wait_until_rendered(page, "Features")
        page.wait_for_selector("[data-testid='stDataFrame'] canvas")  # the feature list, from the run's file
        assert page.locator("[data-testid='stException']").count() == 0
        browser.close()

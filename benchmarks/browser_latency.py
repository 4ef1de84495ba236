"""What a user waits for in a real browser: a feature deep link until fully drawn, a move to a neighbour inside the
app, and a prompt's heatmap, in headless Chromium against `sae-explorer app` on the same machine.

    .venv/bin/python benchmarks/browser_latency.py                     # runs/demo, 10 of each
    .venv/bin/python benchmarks/browser_latency.py --run runs/suite-smollm2 --repeats 20

"Fully drawn" is: the script finished (no running indicator), the page's heading is the one expected, every plotly
chart has drawn its SVG and every table its canvas. A deep link is timed twice: in a fresh browser profile (nothing
cached: what a colleague opening a link meets) and in a warm tab (the Streamlit bundle cached). Needs Debian's
chromium and the playwright package (as the browser test does). Budget on a 2-core machine with browser and server
on the same cores (issue 18): neighbour click ≤ 1.5 s, deep link ≤ 3 s.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_core.features.reader import FeatureStore  # noqa: E402
from sae_core.testing.app_server import running_app  # noqa: E402

DRAWN = """([heading, charts, tables, svg]) => {
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;       // the script still runs
  if (document.querySelector('[data-stale="true"]')) return false;                  // leftovers of the last run
  const h = [...document.querySelectorAll('h3, h1')].map(e => e.textContent);
  if (!h.some(t => t.includes(heading))) return false;
  const shown = e => e.offsetParent !== null;                                         // not in a hidden tab
  const plots = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].filter(shown);
  if (plots.length < charts || plots.some(p => !p.querySelector('svg.main-svg'))) return false;
  if (svg && !document.querySelector('svg[aria-label="activation histogram"]')) return false;
  if (svg && document.querySelectorAll('table[aria-label$="tokens"]').length < 2) return false;       // logit tables
  const grids = [...document.querySelectorAll('[data-testid="stDataFrame"]')].filter(shown);
  return grids.length >= tables && grids.every(g => g.querySelector('canvas'));
}"""


HEATMAP_OF = """(word) => [...document.querySelectorAll('.js-plotly-plot')]
  .some(gd => gd.offsetParent !== null && JSON.stringify((gd.data || []).map(t => t.y)).includes(word))"""
WORDS = ["apple", "river", "music", "bread", "glass", "cloud", "stone", "horse", "paper", "light", "water", "green",
         "chair", "table", "money", "night", "house", "field", "sugar", "metal"]


def wait_drawn(page, heading: str, charts: int = 0, tables: int = 0, timeout_ms: int = 60_000, svg: bool = False) -> None:
    page.wait_for_function(DRAWN, arg=[heading, charts, tables, svg], timeout=timeout_ms, polling=25)


def wait_feature(page, heading: str, grids: int, baseline: bool = False) -> None:
    """A feature page fully drawn: its histogram and logit tables (a plotly chart and two more grids in apps before
    issue 18; inline SVG and HTML tables now) and its `grids` tables of features."""
    wait_drawn(page, heading, 1 if baseline else 0, grids + 2 if baseline else grids, svg=not baseline)


def grids_of(store: FeatureStore, sae: str, feature: int) -> int:
    """How many feature tables the page of `feature` draws: its non-empty neighbour lists, its similar features,
    and the score table of its newest explanation."""
    page = store.feature(sae, feature)
    lists = sum(frame is not None and not frame.empty for frame in page.neighbours.values())
    similar = bool(store.embedder_settings) and not store.similar_features(sae, feature).empty
    return lists + similar + (not page.explanations.empty)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {statistics.median(values):.2f} | {percentile(values, 0.95):.2f} | "
            f"{max(values):.2f} |")


def deep_links(browser, warm, url: str, sae: str, feature: int, grids: int, into: dict[str, list[float]],
               baseline: bool = False) -> None:
    """Time one deep link in a fresh browser profile (nothing cached) and in the warm tab."""
    heading = f"{sae} · feature {feature}"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    fresh = context.new_page()
    start = time.perf_counter()
    fresh.goto(f"{url}/Features?sae={sae}&feature={feature}")
    wait_feature(fresh, heading, grids, baseline)
    into["deep link, fresh browser"].append(time.perf_counter() - start)
    context.close()
    start = time.perf_counter()
    warm.goto(f"{url}/Features?sae={sae}&feature={feature}")
    wait_feature(warm, heading, grids, baseline)
    into["deep link, warm tab"].append(time.perf_counter() - start)


def pick_features(run: Path, n: int, seed: int) -> list[tuple[str, int, int, int, int]]:
    """Live features with decoder-cosine neighbours: (SAE, feature, its tables, first neighbour, the neighbour's)."""
    with FeatureStore(run) as store:
        rng = random.Random(seed)
        chosen = []
        names = list(store.saes().short_name)
        while len(chosen) < n:
            sae = rng.choice(names)
            feature = int(store.random_feature(sae)[1])
            page = store.feature(sae, feature)
            near = page.neighbours.get("decoder_cosine")
            if page.feature["dead"] or near is None or near.empty:
                continue
            first = int(near["feature"].iloc[0])
            chosen.append((sae, feature, grids_of(store, sae, feature), first, grids_of(store, sae, first)))
        return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a precomputed run (default: runs/demo)")
    parser.add_argument("--repeats", type=int, default=10, help="deep links, neighbour clicks and prompts each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-root", type=Path, help="another checkout of this project (e.g. `git worktree add "
                        "/tmp/before COMMIT`): its app's deep links are timed the same way, alternating with ours")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install -y chromium")
    run = Path(args.run)
    features = pick_features(run, args.repeats, args.seed)
    results: dict[str, list[float]] = {"deep link, fresh browser": [], "deep link, warm tab": [],
                                       "neighbour click (in app)": [], "prompt heatmap": []}
    baseline = {"deep link, fresh browser": [], "deep link, warm tab": []}
    with ExitStack() as stack:
        url = stack.enter_context(running_app(run))
        before = stack.enter_context(running_app(run.resolve(), root=args.baseline_root.resolve())) if args.baseline_root else None
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        warm = browser.new_page(viewport={"width": 1400, "height": 1000})
        old = browser.new_page(viewport={"width": 1400, "height": 1000}) if before else None
        for tab, at in ((warm, url), (old, before)):
            if tab is not None:  # the server opens the store and warms its caches
                tab.goto(f"{at}/Features?sae={features[0][0]}&feature={features[0][1]}")
                wait_feature(tab, f"{features[0][0]} · feature {features[0][1]}", features[0][2], tab is old)
        for sae, feature, grids, neighbour, neighbour_grids in features:
            deep_links(browser, warm, url, sae, feature, grids, results)
            if old is not None:
                deep_links(browser, old, before, sae, feature, grids, baseline, baseline=True)
            # the first row of the "nearest by decoder cosine" table: its row-selection box, at the left
            column = warm.locator('[data-testid="stColumn"]', has=warm.get_by_text("nearest by decoder cosine"))
            grid = column.locator('[data-testid="stDataFrame"]').first
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            warm.wait_for_timeout(300)  # a person reads before clicking; a click during the last layout shift is lost
            start = time.perf_counter()
            warm.mouse.click(box["x"] + 12, box["y"] + 35 + 17)
            try:
                wait_feature(warm, f"{sae} · feature {neighbour}", neighbour_grids)
            except Exception:
                warm.screenshot(path="neighbour-click-failed.png", full_page=True)
                raise SystemExit(f"the click on {sae} #{feature}'s first neighbour did not open it; "
                                 "see neighbour-click-failed.png") from None
            results["neighbour click (in app)"].append(time.perf_counter() - start)
        warm.goto(f"{url}/Prompt")
        wait_drawn(warm, "Prompt", 1, 1, timeout_ms=300_000)  # loads the model once
        for i in range(args.repeats):
            word = WORDS[i % len(WORDS)]
            warm.get_by_role("textbox", name="prompt").fill(f"The committee met to discuss the {word} again ({i}).")
            start = time.perf_counter()
            warm.get_by_role("button", name="show activations").click()
            warm.wait_for_function(HEATMAP_OF, arg=word, timeout=60_000, polling=25)  # the new prompt's tokens
            wait_drawn(warm, "Prompt", 1, 1)
            results["prompt heatmap"].append(time.perf_counter() - start)
        browser.close()
    print(f"\nrun {run}, {args.repeats} of each, headless Chromium and the app on this machine\n")
    print("| what | n | p50 s | p95 s | max s |\n|---|---:|---:|---:|---:|")
    for name, values in results.items():
        print(summary(name, values))
    if args.baseline_root:
        print(f"\nbaseline: the app of {args.baseline_root}, the same deep links, alternating with ours\n")
        print("| what | n | p50 s | p95 s | max s | p50 before ÷ now |\n|---|---:|---:|---:|---:|---:|")
        for name, values in baseline.items():
            print(f"{summary(name, values)} {statistics.median(values) / statistics.median(results[name]):.2f}× |")


if __name__ == "__main__":
    main()

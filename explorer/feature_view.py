"""What the Features page shows, built from a `FeaturePage`: shaded token HTML, the histogram, tables, links.

No Streamlit here: pages call these and render the results, and tests call them directly.
"""

from __future__ import annotations

import html
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlencode

import pandas as pd

from sae_core.features.labels import display_token
from sae_core.features.reader import FeaturePage
from sae_core.model.sites import TRANSCODER, Site

INTERVAL_TITLES = {0: "Top activations"}


_MARKDOWN_SPECIAL = "\\`*_{}[]()#+-.!|<>~$:"


def escape_markdown(text: str) -> str:
    """`text` shown literally by `st.markdown` (labels are made of tokens, which may hold `*`, `[`, `$` …)."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


LINK_PARAMS: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("LINK_PARAMS", default=())
"""Query parameters every link of this page run carries (the run's name, the access token): a link opened in a new
tab starts a new session, which knows only its URL. Set per script run by `explorer.state.page_header`."""


def feature_params(sae: str, feature: int) -> dict[str, str]:
    """The query parameters that open a feature on a page of the app: SAE, feature, and what every link carries."""
    return {"sae": sae, "feature": str(int(feature)), **dict(LINK_PARAMS.get())}


def feature_link(sae: str, feature: int, page: str = "Features") -> str:
    """A relative deep link to a feature on a page of the app (the query string carries SAE, feature, and run)."""
    return f"{page}?{urlencode(feature_params(sae, feature))}"


def shade_tokens_html(tokens: list[str], acts: list[float], scale: float, focus: int | None = None) -> str:
    """Tokens as inline spans shaded by activation (0 → white, `scale` → full orange), the value on hover."""
    scale = scale if scale and scale > 0 else 1.0
    spans = []
    for i, (token, act) in enumerate(zip(tokens, acts)):
        alpha = max(0.0, min(1.0, float(act) / scale))
        border = "border-bottom:2px solid #333;" if i == focus else ""
        text = html.escape(token).replace("\n", "⏎")
        spans.append(
            f'<span title="{html.escape(repr(token))}: {float(act):.3f}" '
            f'style="background:rgba(255,140,0,{alpha:.2f});{border}white-space:pre;padding:0 1px">{text}</span>'
        )
    return '<div style="font-family:monospace;line-height:1.9">' + "".join(spans) + "</div>"


def interval_title(kind: int, n_intervals: int) -> str:
    """Heading of an example group: top activations, or a quantile interval of the feature's activations."""
    if kind == 0:
        return INTERVAL_TITLES[0]
    low, high = (kind - 1) * 100 // n_intervals, kind * 100 // n_intervals
    return f"Interval {kind}: activations between the {low}th and {high}th percentile of its firings"


def example_groups(page: FeaturePage) -> list[tuple[str, list[str]]]:
    """Per example kind (top, then strongest interval first): a title and one shaded HTML line per example."""
    examples = page.examples
    if examples.empty:
        return []
    scale = float(page.feature["max_act"])
    kinds = sorted(examples["kind"].unique(), key=lambda k: (k != 0, -k))
    n_intervals = int(max(examples["kind"].max(), 1))
    groups = []
    for kind in kinds:
        rows = examples[examples["kind"] == kind]
        lines = [shade_tokens_html(list(r.tokens), list(r.acts), scale, focus=int(r.max_index)) for r in rows.itertuples()]
        groups.append((interval_title(int(kind), n_intervals), lines))
    return groups


def histogram_svg(page: FeaturePage, width: int = 640, height: int = 200) -> str:
    """The feature's activation histogram over the tokens where it fires, as inline SVG (each bar's range and count
    on hover). Inline, so a deep link draws without loading a charting library into the browser (about 1.2 s of a
    fresh page load on a 2-core machine)."""
    hist = page.histogram
    left, bottom, top = 44, 34, 26
    plot_w, plot_h = width - left - 24, height - bottom - top
    counts = [int(c) for c in hist["count"]]
    peak = max(counts) if counts and max(counts) > 0 else 1
    lo, hi = (float(hist["low"].min()), float(hist["high"].max())) if len(hist) else (0.0, 1.0)
    span = hi - lo or 1.0
    bars = []
    for low, high, count in zip(hist["low"], hist["high"], counts):
        x = left + (float(low) - lo) / span * plot_w
        w = max((float(high) - float(low)) / span * plot_w, 0.5)
        h = count / peak * plot_h
        bars.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{w:.1f}" height="{h:.1f}" fill="darkorange">'
                    f"<title>{float(low):.2f}–{float(high):.2f}: {count:,} tokens</title></rect>")
    axis = "#666"
    ticks = "".join(
        f'<text x="{left + f * plot_w:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{lo + f * span:.2f}</text>'
        for f in (0, 0.25, 0.5, 0.75, 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'style="max-width:{width}px;font:11px sans-serif" role="img" aria-label="activation histogram">'
            f'<text x="{left}" y="14" font-size="13">activation histogram (firing tokens)</text>'
            f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="{axis}"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="{axis}"/>'
            f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:,}</text>'
            f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>'
            f'{"".join(bars)}<g fill="{axis}">{ticks}</g>'
            f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">activation</text></svg>')


def logit_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Logit effects as a two-column table with readable tokens."""
    return pd.DataFrame({"token": [display_token(t) for t in frame["token"]], "effect": frame["value"].round(3)})


def logit_html(frame: pd.DataFrame, title: str) -> str:
    """Logit effects as a small static HTML table, each effect with a bar scaled to the largest |effect|.

    Plain HTML, not `st.dataframe`: ten read-only rows do not need a data grid, and each grid costs the browser a
    canvas and a layout pass on a fresh page load (issue 18's deep-link budget).
    """
    table = logit_table(frame)
    scale = float(table["effect"].abs().max() or 1.0) if len(table) else 1.0
    cell = "padding:1px 6px;overflow:hidden;text-overflow:ellipsis;white-space:pre"
    rows = []
    for token, effect in zip(table["token"], table["effect"]):
        colour = "0,104,201" if effect >= 0 else "201,52,0"
        share = round(100 * abs(float(effect)) / scale)
        bar = f"background:linear-gradient(to right,rgba({colour},0.35) {share}%,transparent {share}%)"
        rows.append(f'<tr><td style="{cell};font-family:monospace" title="{html.escape(token)}">{html.escape(token)}</td>'
                    f'<td style="{cell};text-align:right;{bar}">{float(effect):.3f}</td></tr>')
    return (f'<table aria-label="{html.escape(title)}" style="font-size:13px;table-layout:fixed;width:100%;'
            f'border-collapse:collapse"><tr><th style="{cell};text-align:left">token</th>'
            f'<th style="{cell};text-align:right">effect</th></tr>{"".join(rows)}</table>')


def neighbour_table(frame: pd.DataFrame, sae: str) -> pd.DataFrame:
    """Neighbours with a link column for `st.dataframe`'s LinkColumn."""
    return pd.DataFrame({
        "feature": [feature_link(sae, f) for f in frame["feature"]],
        "score": frame["score"].round(3),
        "label": frame["label"],
        "density": frame["density"],
    })


def where_it_reads(sae: dict[str, Any]) -> str:
    """The SAE's hook; for a transcoder also what it writes, since its examples are read at the MLP's input while its
    logit effects come from the MLP output it predicts."""
    if sae.get("site") != TRANSCODER:
        return str(sae["hook_name"])
    writes = Site(int(sae["layer"]), TRANSCODER).hook_name_out
    return f"{sae['hook_name']} → {writes} (a transcoder: fires on the MLP's input, writes its prediction of the MLP's output)"


def summary_line(page: FeaturePage) -> str:
    """One line of the feature's key numbers."""
    f = page.feature
    if f["dead"]:
        return f"never fired on the {int(page.sae['n_tokens']):,} precompute tokens"
    return (f"density {f['density']:.3%} ({int(f['fires']):,} of {int(page.sae['n_tokens']):,} tokens) · "
            f"max activation {f['max_act']:.2f} · mean when firing {f['mean_act']:.2f}")


RELEASE_STATS = ("fires", "density", "max_act", "mean_act")


def release_comparison(page: FeaturePage) -> pd.DataFrame:
    """This run's numbers for the feature beside each release's own (`import-stats`), one row per source; a release's
    missing number stays empty, never filled from ours."""
    f = page.feature
    rows = [{"source": f"this run ({int(page.sae['n_tokens']):,} precompute tokens)",
             **{k: f[k] for k in RELEASE_STATS}}]
    rows += [{"source": f"release: {r['origin']}", **{k: r[k] for k in RELEASE_STATS}}
             for r in page.release.features.to_dict("records")]
    return pd.DataFrame(rows)


def release_prompts(page: FeaturePage, origin: str) -> pd.DataFrame:
    """A release's top prompts of the feature, as it gives them (its text, not our tokenisation)."""
    ex = page.release.examples
    ex = ex[ex["origin"] == origin]
    return pd.DataFrame({"rank": ex["rank"] + 1, "activation": ex["activation"], "token": ex["token"], "text": ex["text"]})

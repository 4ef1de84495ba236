"""What the Features page shows, built from a `FeaturePage`: shaded token HTML, the histogram, tables, links.

No Streamlit here: pages call these and render the results, and tests call them directly.
"""

from __future__ import annotations

import html
from contextvars import ContextVar
from urllib.parse import urlencode

import pandas as pd
import plotly.graph_objects as go

from sae_core.features.labels import display_token
from sae_core.features.reader import FeaturePage

INTERVAL_TITLES = {0: "Top activations"}


_MARKDOWN_SPECIAL = "\\`*_{}[]()#+-.!|<>~$:"


def escape_markdown(text: str) -> str:
    """`text` shown literally by `st.markdown` (labels are made of tokens, which may hold `*`, `[`, `$` …)."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


LINK_PARAMS: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("LINK_PARAMS", default=())
"""Query parameters every link of this page run carries (the run's name, the access token): a link opened in a new
tab starts a new session, which knows only its URL. Set per script run by `explorer.state.page_header`."""


def feature_link(sae: str, feature: int, page: str = "Features") -> str:
    """A relative deep link to a feature on a page of the app (the query string carries SAE, feature, and run)."""
    return f"{page}?{urlencode([('sae', sae), ('feature', int(feature)), *LINK_PARAMS.get()])}"


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


def histogram_figure(page: FeaturePage) -> go.Figure:
    """The feature's activation histogram over the tokens where it fires."""
    hist = page.histogram
    fig = go.Figure(go.Bar(x=(hist["low"] + hist["high"]) / 2, y=hist["count"], width=hist["high"] - hist["low"],
                           marker_color="darkorange", hovertemplate="%{x:.2f}: %{y} tokens<extra></extra>"))
    fig.update_layout(height=220, margin=dict(l=10, r=10, t=30, b=10), title="activation histogram (firing tokens)",
                      xaxis_title="activation", yaxis_title="tokens", bargap=0)
    return fig


def logit_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Logit effects as a two-column table with readable tokens."""
    return pd.DataFrame({"token": [display_token(t) for t in frame["token"]], "effect": frame["value"].round(3)})


def neighbour_table(frame: pd.DataFrame, sae: str) -> pd.DataFrame:
    """Neighbours with a link column for `st.dataframe`'s LinkColumn."""
    return pd.DataFrame({
        "feature": [feature_link(sae, f) for f in frame["feature"]],
        "score": frame["score"].round(3),
        "label": frame["label"],
        "density": frame["density"],
    })


def summary_line(page: FeaturePage) -> str:
    """One line of the feature's key numbers."""
    f = page.feature
    if f["dead"]:
        return f"never fired on the {int(page.sae['n_tokens']):,} precompute tokens"
    return (f"density {f['density']:.3%} ({int(f['fires']):,} of {int(page.sae['n_tokens']):,} tokens) · "
            f"max activation {f['max_act']:.2f} · mean when firing {f['mean_act']:.2f}")

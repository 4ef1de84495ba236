"""The Layers page's charts: the paper's comparison of SAEs across layers and sites (held-out metrics of every
evaluated SAE, the feature file's statistics otherwise), and one prompt's active features side by side across layers.

No Streamlit here; the page renders these figures and tests call them directly.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from torch import Tensor

from sae_core.evaluation.layer_report import BY_LAYER, SITE_NAMES
from sae_core.evaluation.metrics_table import NOTES
from sae_core.features.labels import display_token

from .feature_view import feature_link
from .prompt_view import token_heatmap

METRICS = {"fvu": "FVU (held-out; lower is better)", **BY_LAYER}
"""Column of `by_layer_frame()` → chart title: the paper's per-layer panels."""
PRECOMPUTE_METRICS = {"l0": "L0 on the precompute tokens", "dead_fraction": "dead fraction on the precompute tokens"}
"""The charts of a run without held-out metrics (e.g. imported and not evaluated), from the feature file."""


def by_layer_frame(metrics: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per SAE, what the per-layer charts plot, with `layer`, `kind`, `site name`, `short_name` and `d_sae`.

    Held-out metrics of every evaluated SAE (`metrics`, from metrics.json: also SAEs left out of the feature
    file), or else the feature file's `summary` (its L0 and dead fraction on the precompute tokens).
    """
    if not metrics.empty:
        return metrics.rename(columns={"site": "short_name"}).sort_values(["layer", "kind"], kind="stable")
    return with_site_names(summary).rename(columns={"site": "kind"})


def with_site_names(summary: pd.DataFrame) -> pd.DataFrame:
    """The feature file's summary with a readable `site name` column, in layer order."""
    return summary.assign(**{"site name": summary["site"].map(SITE_NAMES).fillna(summary["site"])}).sort_values(["layer", "site"])


def metric_by_layer(frame: pd.DataFrame, metric: str, title: str | None = None) -> go.Figure | None:
    """One line per site of `metric` against layer; None when no SAE has that metric.

    SAEs whose value is n/a (e.g. CE-loss recovered where zero ablation barely moves the loss) are left out and
    counted in the title; values with a warning (a dead fraction over too short a window) get an open ring.
    """
    if metric not in frame:
        return None
    data = frame.dropna(subset=[metric])
    if data.empty:
        return None
    note = NOTES.get(metric)
    noted = note in data and data[note].notna().any()
    fig = px.line(data, x="layer", y=metric, color="site name", markers=True,
                  hover_data=["short_name", "d_sae"] + ([note] if noted else []), title=title or METRICS.get(metric, metric))
    if noted:
        flagged = data[data[note].notna()]
        fig.add_scatter(x=flagged["layer"], y=flagged[metric], mode="markers", name="warning (hover)",
                        hovertext=flagged["short_name"] + ": " + flagged[note],
                        marker=dict(symbol="circle-open", size=13, color="black"))
    n_na = len(frame) - len(data)
    if n_na:
        fig.update_layout(title_text=f"{fig.layout.title.text} · {n_na} n/a")
    if metric in ("l0", "dead_fraction"):  # counts and fractions from 0: TopK's L0 of 32.0 is not a wiggle
        fig.update_yaxes(rangemode="tozero")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
    return fig


def sparsity_fidelity(frame: pd.DataFrame) -> go.Figure | None:
    """L0 against FVU, one point per SAE, coloured by site: the sparsity–fidelity trade-off."""
    if "fvu" not in frame:
        return None
    data = frame.dropna(subset=["fvu"])
    if data.empty:
        return None
    fig = px.scatter(data, x="l0", y="fvu", color="site name", text="short_name" if len(data) <= 15 else None,
                     hover_data=["short_name", "layer", "d_sae"],
                     title="sparsity vs fidelity (each point one SAE)", labels={"l0": "L0", "fvu": "FVU"})
    fig.update_traces(textposition="top center")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
    return fig


def density_histograms(summary: pd.DataFrame) -> go.Figure:
    """Each SAE's histogram of log10 feature density (alive features), as lines."""
    fig = go.Figure()
    for row in with_site_names(summary).itertuples():
        edges = list(row.log10_density_edges)
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        fig.add_trace(go.Scatter(x=centres, y=list(row.log10_density_counts), mode="lines", name=row.short_name))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), title="feature density (log10, alive features)",
                      xaxis_title="log10 density", yaxis_title="features")
    return fig


def strongest_per_token(acts: dict[str, Tensor], tokens: list[str], labels: dict[str, dict[int, str]]) -> go.Figure:
    """Tokens (rows) × SAEs (columns, in layer order): each cell names the SAE's strongest feature at that token,
    coloured by its activation relative to the SAE's peak on the prompt; the label and value show on hover."""
    values, features = zip(*(a.max(dim=1) for a in acts.values()))
    z = torch.stack([v / v.max().clamp_min(1e-9) for v in values], dim=1).numpy()
    names = list(acts)
    text = [[f"#{int(features[j][i])}" if values[j][i] > 0 else "" for j in range(len(names))] for i in range(len(tokens))]
    hover = [[f"{text[i][j]} {labels.get(name, {}).get(int(features[j][i]), '')} · {float(values[j][i]):.3f}"
              if text[i][j] else "no feature fires" for j, name in enumerate(names)] for i in range(len(tokens))]
    return token_heatmap(z, names, tokens, "strongest feature at each token (colour: share of the SAE's peak)",
                         colorscale="Oranges", zmin=0, zmax=1, text=text, texttemplate="%{text}", customdata=hover,
                         hovertemplate="%{y} · %{x}<br>%{customdata}<extra></extra>")


def prompt_features_table(acts: Tensor, tokens: list[str], features: list[int], labels: dict[int, str], sae: str) -> pd.DataFrame:
    """Some of one SAE's features on a prompt: link, peak activation, the token where it peaks, tokens active, label."""
    peak_at = acts[:, features].argmax(dim=0).tolist() if features else []
    return pd.DataFrame({
        "feature": [feature_link(sae, f) for f in features],
        "peak": [round(float(acts[p, f]), 3) for f, p in zip(features, peak_at)],
        "at": [display_token(tokens[p]) for p in peak_at],
        "tokens": [int((acts[:, f] > 0).sum()) for f in features],
        "label": [labels.get(f, "") for f in features],
    })

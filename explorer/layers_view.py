"""The Layers page's charts: the paper's comparison of SAEs across layers and sites, from `layer_summary()`,
and one prompt's active features side by side across layers.

No Streamlit here; the page renders these figures and tests call them directly.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from torch import Tensor

from sae_core.features.labels import display_token

from .feature_view import feature_link
from .prompt_view import token_heatmap

SITE_NAMES = {"resid_post": "residual stream", "mlp_out": "MLP output", "attn_out": "attention output"}
METRICS = {
    "fvu": "FVU (held-out; lower is better)",
    "explained_variance": "explained variance (held-out)",
    "l0": "L0 on the precompute tokens",
    "dead_fraction": "dead fraction on the precompute tokens",
    "ce_loss_recovered": "CE-loss recovered (held-out; higher is better)",
    "delta_lm_loss": "Δ LM loss with the SAE spliced in (nats)",
}
"""Column of `FeatureStore.layer_summary()` → chart title."""


def with_site_names(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with a readable `site name` column, in layer order."""
    return summary.assign(**{"site name": summary["site"].map(SITE_NAMES).fillna(summary["site"])}).sort_values(["layer", "site"])


def metric_by_layer(summary: pd.DataFrame, metric: str) -> go.Figure | None:
    """One line per site of `metric` against layer; None when no SAE has that metric."""
    data = with_site_names(summary).dropna(subset=[metric])
    if data.empty:
        return None
    fig = px.line(data, x="layer", y=metric, color="site name", markers=True, hover_data=["short_name", "d_sae"],
                  title=METRICS.get(metric, metric))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
    return fig


def sparsity_fidelity(summary: pd.DataFrame) -> go.Figure | None:
    """L0 against FVU, one point per SAE, coloured by site: the sparsity–fidelity trade-off."""
    data = with_site_names(summary).dropna(subset=["fvu"])
    if data.empty:
        return None
    fig = px.scatter(data, x="l0", y="fvu", color="site name", text="short_name", hover_data=["layer", "d_sae", "architecture"],
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

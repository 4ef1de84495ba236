"""The Prompt page's pieces: token × feature heatmaps and per-token feature tables (no Streamlit here)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from torch import Tensor

from sae_core.features.labels import display_token

from .feature_view import feature_link


def token_labels(tokens: list[str]) -> list[str]:
    """Distinct axis labels for tokens (plotly merges equal category names): `3: the`."""
    return [f"{i}: {display_token(t)}" for i, t in enumerate(tokens)]


def token_heatmap(z, columns: list[str], tokens: list[str], title: str, **trace: object) -> go.Figure:
    """A tokens (rows, in order) × `columns` heatmap with the column names on top, under the title."""
    layout = dict(title=dict(text=title, y=0.995, yanchor="top", yref="container"), height=max(300, 18 * len(tokens) + 150),
                  margin=dict(l=10, r=10, t=100, b=10), yaxis=dict(autorange="reversed", type="category"),
                  xaxis=dict(side="top", type="category"))
    return go.Figure(go.Heatmap(z=z, x=columns, y=token_labels(tokens), **trace), layout=layout)  # not update_layout: half the time


def heatmap_figure(acts: Tensor, tokens: list[str], features: list[int], labels: dict[int, str], title: str) -> go.Figure:
    """Tokens (rows) × the given features (columns), coloured by activation; hover shows token, feature, label, value."""
    hover = [[f"{display_token(t)} · #{f} {labels.get(f, '')}" for f in features] for t in tokens]
    return token_heatmap(acts[:, features].numpy(), [f"#{f}" for f in features], tokens, title, colorscale="Oranges",
                         customdata=hover, hovertemplate="%{customdata}<br>activation %{z:.3f}<extra></extra>")


def token_feature_table(acts: Tensor, position: int, n: int, labels: dict[int, str], sae: str) -> pd.DataFrame:
    """The `n` strongest features at one token, with labels and links to their pages."""
    row = acts[position]
    top = row.topk(min(n, row.numel()))
    keep = [(int(f), float(v)) for f, v in zip(top.indices, top.values) if v > 0]
    return pd.DataFrame({
        "feature": [feature_link(sae, f) for f, _ in keep],
        "activation": [round(v, 3) for _, v in keep],
        "label": [labels.get(f, "") for f, _ in keep],
    })

"""Layers: the paper's comparison of SAEs across layers and sites (residual, MLP, attention)."""

import streamlit as st

from explorer.layers_view import METRICS, density_histograms, metric_by_layer, sparsity_fidelity
from explorer.state import open_feature_store_or_stop

st.title("Layers")
run, store = open_feature_store_or_stop()

summary = store.layer_summary()
st.caption(f"run `{run}` · {len(summary)} SAEs · metrics on held-out text; L0 and dead fraction on "
           f"{int(summary['n_tokens'].max()):,} precompute tokens")
if summary["fvu"].isna().all():
    st.warning(f"These SAEs have no evaluation metrics yet: run `sae-explorer eval {run}` and precompute again.")

charts = [fig for metric in METRICS if (fig := metric_by_layer(summary, metric)) is not None]
for i in range(0, len(charts), 2):
    for column, fig in zip(st.columns(2), charts[i : i + 2]):
        column.plotly_chart(fig, width="stretch")
scatter = sparsity_fidelity(summary)
left, right = st.columns(2)
if scatter is not None:
    left.plotly_chart(scatter, width="stretch")
right.plotly_chart(density_histograms(summary), width="stretch")
st.dataframe(summary.drop(columns=["log10_density_edges", "log10_density_counts"]), hide_index=True)

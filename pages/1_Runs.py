"""Runs: pick one of the served runs and see its SAEs' held-out metrics as a table and charts."""

import plotly.express as px
import streamlit as st

from explorer.layers_view import by_layer_frame, metric_by_layer
from explorer.runs_view import metrics_frame, run_summary
from explorer.state import current_run_name, page_header, public, server, show_metric_notes
from sae_core.errors import UserError

page_header("Runs")
catalog = server().catalog
names = catalog.names()
shown = current_run_name()
choice = st.selectbox("run", names, index=names.index(shown) if shown in names else 0,
                      help=f"the runs this server serves ({catalog.describe()})")
if choice != shown:
    st.session_state["run"] = choice  # the other pages show this run from now on
    st.query_params["run"] = choice
    st.rerun()
run = catalog.resolve(choice)

try:
    summary = run_summary(run)
    frame = metrics_frame(run)
except UserError as exc:
    st.error(public(exc, run))
    st.stop()

st.caption(" · ".join(f"**{k}**: {v}" for k, v in summary.items() if v is not None))
if frame.empty:
    st.warning(f"`{run.name}` has no metrics yet: run `sae-explorer eval {run.name}`.")
    st.stop()

st.dataframe(frame, hide_index=True)
show_metric_notes(frame)
left, right = st.columns(2)
if len(frame) > 12:  # a suite: the paper's view, each metric against layer with one line per site
    by_layer = by_layer_frame(frame, frame.iloc[:0])
    for column, metric in ((left, "fvu"), (right, "ce_loss_recovered")):
        if (fig := metric_by_layer(by_layer, metric)) is not None:
            column.plotly_chart(fig, width="stretch")
    st.caption("The Layers page draws every metric against layer, beside the feature file's statistics.")
else:
    left.plotly_chart(px.bar(frame, x="site", y="fvu", title="FVU on held-out tokens (lower is better)"))
    if "ce_loss_recovered" in frame:
        right.plotly_chart(
            px.bar(frame, x="site", y="ce_loss_recovered", title="CE-loss recovered (higher is better; gaps are n/a)")
        )

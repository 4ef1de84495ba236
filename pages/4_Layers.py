"""Layers: the paper's comparison of SAEs across layers and sites (residual, MLP, attention)."""

import streamlit as st

from explorer.layers_view import (
    METRICS,
    PRECOMPUTE_METRICS,
    by_layer_frame,
    density_histograms,
    metric_by_layer,
    prompt_features_table,
    sparsity_fidelity,
    strongest_per_token,
    with_site_names,
)
from explorer.runs_view import metrics_frame
from explorer.state import (
    live_activations,
    live_model,
    open_feature_store_or_stop,
    page_header,
    prompt_chars,
    public,
    show_metric_notes,
)
from sae_core.errors import UserError
from sae_core.interventions.prompt_activations import strongest_features

page_header("Layers")
run, store = open_feature_store_or_stop()

summary = store.layer_summary()
evaluated = metrics_frame(run)
frame = by_layer_frame(evaluated, summary)
if evaluated.empty:
    st.warning(f"These SAEs have no evaluation metrics yet: run `sae-explorer eval {run.name}` and precompute again. "
               "Until then the charts show the feature file's statistics.")
    titles = PRECOMPUTE_METRICS
else:
    st.caption(f"run `{run.name}` · {len(evaluated)} SAEs evaluated on held-out text (tokens counted in the table) · "
               f"{len(summary)} of them in the feature file (statistics on {int(summary['n_tokens'].max()):,} tokens)")
    titles = METRICS

charts = [fig for metric, title in titles.items() if (fig := metric_by_layer(frame, metric, title)) is not None]
for i in range(0, len(charts), 2):
    for column, fig in zip(st.columns(2), charts[i : i + 2]):
        column.plotly_chart(fig, width="stretch")
show_metric_notes(evaluated)
scatter = sparsity_fidelity(frame)
left, right = st.columns(2)
if scatter is not None:
    left.plotly_chart(scatter, width="stretch")
right.plotly_chart(density_histograms(summary), width="stretch")
st.dataframe(frame.drop(columns=["log10_density_edges", "log10_density_counts"], errors="ignore"), hide_index=True)

st.header("A prompt across layers")
st.caption("The features a prompt activates at each chosen SAE, side by side: the strongest feature at every token, "
           "then each SAE's strongest features on the whole prompt.")
ordered = with_site_names(summary)
names = ordered["short_name"].tolist()
residual = ordered.loc[ordered["site"] == "resid_post", "short_name"].tolist()
with st.form("layers-prompt"):
    text = st.text_area("prompt", value="The Department of Agriculture reported record harvests this year.", height=90,
                        max_chars=prompt_chars())
    chat = st.checkbox("render as a user message in the model's chat template")
    chosen = st.multiselect("SAEs", names, default=residual or names)
    n_features = st.slider("features per SAE", 3, 30, 10)
    if st.form_submit_button("compare across layers"):
        st.session_state["layers-submitted"] = (text, chat, tuple(chosen))
if "layers-submitted" not in st.session_state:
    st.stop()
text, chat, chosen = st.session_state["layers-submitted"]
if not chosen:
    st.warning("Pick at least one SAE.")
    st.stop()
try:
    live = live_model(run)
    missing = set(chosen) - {site.short for site in live.sites()}
    if missing:
        raise UserError(f"the run's SAE folders have no SAE for {', '.join(sorted(missing))}; "
                        f"the feature file and the run disagree: precompute again with `sae-explorer precompute {run.name}`")
    tokens, truncated_from, acts = live_activations(run, live, text, chat, chosen)
except UserError as exc:
    st.error(public(exc, run))
    st.stop()
if truncated_from:
    st.warning(f"The prompt has {truncated_from:,} tokens; only the first {len(tokens):,} are shown (this server's or "
               "the model's limit).")
labels = {short: store.describe(short, acts[short].max(dim=1).indices.unique().tolist()) for short in chosen}
st.plotly_chart(strongest_per_token(acts, tokens, labels), width="stretch")
per_row = 3
for i in range(0, len(chosen), per_row):
    for column, short in zip(st.columns(per_row), chosen[i : i + per_row]):
        with column:
            st.subheader(short)
            features = strongest_features(acts[short], n_features)
            if not features:
                st.info("No feature fires on this prompt here.")
            else:
                table = prompt_features_table(acts[short], tokens, features, store.describe(short, features), short)
                st.dataframe(table, hide_index=True, column_config={
                    "feature": st.column_config.LinkColumn("feature", display_text=r"feature=(\d+)")})

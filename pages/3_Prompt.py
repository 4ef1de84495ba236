"""Prompt: paste text (or a chat message) and see which features fire on each token, at several sites at once."""

import streamlit as st

from explorer.feature_view import shade_tokens_html
from explorer.prompt_view import heatmap_figure, token_feature_table, token_labels
from explorer.state import live_activations, open_live_run_or_stop, page_header, prompt_chars, public
from sae_core.errors import UserError
from sae_core.interventions.prompt_activations import strongest_features

page_header("Prompt")
run, live, store = open_live_run_or_stop()
if store is None:
    st.caption(f"No feature file for `{run.name}`: features show without labels (`sae-explorer precompute {run.name}` adds them).")

names = [site.short for site in live.sites()]
# ?sae=L14R&feature=123 (from a feature page): show that site, and that feature first
focus_sae = st.query_params.get("sae") if st.query_params.get("sae") in names else None
focus_feature = int(st.query_params["feature"]) if focus_sae and st.query_params.get("feature", "").isdigit() else None
with st.form("prompt"):
    text = st.text_area("prompt", value="The Department of Agriculture reported record harvests this year.", height=110,
                        max_chars=prompt_chars())
    chat = st.checkbox("render as a user message in the model's chat template")
    chosen = st.multiselect("sites", names, default=[focus_sae] if focus_sae else names[:3])
    n_features = st.slider("features per site", 5, 50, 20)
    st.form_submit_button("show activations")


if not chosen:
    st.warning("Pick at least one site.")
    st.stop()
try:
    tokens, truncated_from, acts = live_activations(run, live, text, chat, tuple(chosen))
except UserError as exc:
    st.error(public(exc, run))
    st.stop()
if truncated_from:
    st.warning(f"The prompt has {truncated_from:,} tokens; only the first {len(tokens):,} are shown (this server's or "
               "the model's limit).")

prompt_key = abs(hash((text, chat)))  # widgets below start afresh for a new prompt
for tab, short in zip(st.tabs(chosen), chosen):
    with tab:
        site_acts = acts[short]
        features = strongest_features(site_acts, n_features)
        if short == focus_sae and focus_feature is not None and focus_feature < site_acts.shape[1]:
            features = [focus_feature] + [f for f in features if f != focus_feature]
        if not features:
            st.info("No feature fires on this prompt at this site.")
            continue
        labels = store.describe(short, features) if store is not None else {}
        st.plotly_chart(heatmap_figure(site_acts, tokens, features, labels, f"{short}: strongest features"), width="stretch")
        left, right = st.columns(2)
        with left:
            names = {f"#{f} {labels.get(f, '')}".strip(): f for f in features}
            feature = names[st.selectbox("shade the text by feature", list(names), key=f"feature-{short}-{prompt_key}")]
            column = site_acts[:, feature]
            st.markdown(shade_tokens_html(tokens, column.tolist(), float(column.max())), unsafe_allow_html=True)
            st.markdown(f"[open feature #{feature}](Features?sae={short}&feature={feature})")
        with right:
            positions = token_labels(tokens)
            position = positions.index(st.selectbox("features at token", positions, index=len(tokens) - 1,
                                                    key=f"token-{short}-{prompt_key}"))
            table = token_feature_table(site_acts, position, 10, labels, short)
            if table.empty:
                st.write("no feature fires on this token (position 0 and special tokens never count)")
            else:
                st.dataframe(table, hide_index=True, column_config={
                    "feature": st.column_config.LinkColumn("feature", display_text=r"feature=(\d+)")})

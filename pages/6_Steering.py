"""Steering: add or clamp SAE features while the model answers, next to the unsteered answer; sweep the strength."""

import streamlit as st

from explorer.state import open_live_run_or_stop, page_header
from sae_core.errors import UserError
from sae_core.sites import parse_site
from sae_core.steering import FeatureEdit, generate

page_header("Steering")
run, opened, store = open_live_run_or_stop()
names = [site.short for site in opened.saes]
focus_sae = st.query_params.get("sae") if st.query_params.get("sae") in names else names[0]
focus_feature = int(st.query_params["feature"]) if st.query_params.get("feature", "").isdigit() else 0

message = st.text_area("message", value="Tell me about your favourite city.", height=90)
chat = st.checkbox("as a user message in the model's chat template", value=True)
n_edits = st.number_input("features to steer with", min_value=1, max_value=3, value=1)
edits = []
for i in range(int(n_edits)):
    a, b, c, d = st.columns([2, 2, 2, 2])
    site = a.selectbox("site", names, index=names.index(focus_sae) if i == 0 else 0, key=f"site-{i}")
    feature = b.number_input("feature", min_value=0, value=focus_feature if i == 0 else 0, key=f"feature-{i}")
    mode = c.selectbox("mode", ["add", "clamp"], key=f"mode-{i}",
                       help="add: strength × the feature's decoder direction at every position; clamp: set its activation")
    strength = d.number_input("strength", value=8.0, step=1.0, key=f"strength-{i}")
    edits.append(FeatureEdit(parse_site(site), int(feature), float(strength), mode))
    if store is not None:
        st.caption(f"{site} #{int(feature)}: {store.labels(site, [int(feature)]).get(int(feature), '')}")
max_new = st.slider("new tokens", 8, 128, 48)


def answer(with_edits: list[FeatureEdit]) -> str:
    return generate(opened.loaded, opened.saes, message, with_edits, max_new_tokens=max_new, chat=chat)


if st.button("generate"):
    try:
        with st.spinner("generating twice (unsteered and steered) …"):
            plain, steered = answer([]), answer(edits)
    except UserError as exc:
        st.error(str(exc))
        st.stop()
    left, right = st.columns(2)
    left.subheader("unsteered")
    left.write(plain)
    right.subheader("steered")
    right.write(steered)

with st.expander("sweep the strength of the first feature"):
    values = st.text_input("strengths", value="0, 4, 8, 16")
    if st.button("run the sweep"):
        try:
            strengths = [float(v) for v in values.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            st.error("write the strengths as numbers separated by commas, e.g. 0, 4, 8, 16")
            st.stop()
        rows = []
        progress = st.progress(0.0, text="generating …")
        try:
            for i, value in enumerate(strengths):
                first = edits[0]
                rows.append({"strength": value, "answer": answer([FeatureEdit(first.site, first.feature, value, first.mode)])})
                progress.progress((i + 1) / len(strengths), text=f"strength {value}")
        except UserError as exc:
            st.error(str(exc))
            st.stop()
        st.dataframe(rows, hide_index=True)

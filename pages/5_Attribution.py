"""Attribution: which features at which tokens drive a prediction (activation × gradient), checked by ablation."""

import pandas as pd
import streamlit as st

from explorer.feature_view import feature_link, shade_tokens_html
from explorer.state import cached_job, live_job, open_live_run_or_stop, page_header, public
from explorer.target_picker import choose_target_or_stop, target_label
from sae_core.errors import UserError

page_header("Attribution")
run, live, store = open_live_run_or_stop()
names = [site.short for site in live.sites()]

choice = choose_target_or_stop(run, live, names[:3])
prompt, chosen, ids, target = choice.prompt, choice.sites, choice.ids, choice.target
position = target.position
rows = st.slider("rows", 10, 100, 25)
try:
    value, table = cached_job(("attribution", str(run), ids, target, tuple(chosen), rows),
                              lambda: live.attribute(prompt, target, tuple(chosen), rows), "computing gradients")
    table = pd.DataFrame(table)  # its own frame: the columns are shared with other sessions, this page adds to it
except UserError as exc:
    st.error(public(exc, run))
    st.stop()

st.metric(f"target: {target_label(live, target)}", f"{value:.3f}")
if table.empty:
    st.info("No feature at these sites contributes to the target.")
    st.stop()

totals = [0.0] * len(prompt.tokens)
for p, a in zip(table["position"], table["attribution"]):
    totals[p] += abs(a)
st.markdown("tokens shaded by the total |attribution| of their features:")
st.markdown(shade_tokens_html(prompt.tokens, totals, max(totals), focus=position), unsafe_allow_html=True)
if store is not None:
    labels = {site: store.describe(site, list(group["feature"])) for site, group in table.groupby("site")}  # one query per site
    table["label"] = [labels[s].get(f, "") for s, f in zip(table["site"], table["feature"])]
features = list(zip(table["site"], table["position"], table["feature"]))
table["feature"] = [feature_link(s, f) for s, f in zip(table["site"], table["feature"])]
st.dataframe(table, hide_index=True, column_config={"feature": st.column_config.LinkColumn("feature", display_text=r"feature=(\d+)")})

n_ablate = st.number_input("ablate the top features", min_value=1, max_value=len(table), value=min(5, len(table)))
if st.button("ablate"):
    top = int(n_ablate)
    try:
        with live_job("ablating"):
            before, after = live.ablate(prompt, target, tuple(chosen), [(s, int(p), int(f)) for s, p, f in features[:top]])
    except UserError as exc:
        st.error(public(exc, run))
        st.stop()
    predicted = float(table["attribution"].head(top).sum())
    st.metric("target after ablation", f"{after:.3f}", delta=f"{after - before:+.3f}")
    st.caption(f"activation × gradient predicted a change of {-predicted:+.3f} (first-order estimate)")

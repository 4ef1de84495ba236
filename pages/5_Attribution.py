"""Attribution: which features at which tokens drive a prediction (activation × gradient), checked by ablation."""

import pandas as pd
import streamlit as st

from explorer.feature_view import feature_link, shade_tokens_html
from explorer.prompt_view import token_labels
from explorer.state import (
    cached_job,
    live_job,
    max_prompt_tokens,
    open_live_run_or_stop,
    page_header,
    prompt_chars,
    public,
)
from sae_core.errors import UserError
from sae_core.interventions.attribution import Target

page_header("Attribution")
run, live, store = open_live_run_or_stop()
names = [site.short for site in live.sites()]

text = st.text_area("prompt", value="The capital of France is", height=90, max_chars=prompt_chars())
chat = st.checkbox("render as a user message in the model's chat template")
chosen = st.multiselect("sites", names, default=names[:3])
try:
    prompt = live.tokenize(text, chat, max_prompt_tokens())
except UserError as exc:
    st.error(public(exc, run))
    st.stop()
if prompt.truncated_from:
    st.warning(f"The prompt has {prompt.truncated_from:,} tokens; only the first {len(prompt.ids):,} are used.")
if not chosen:
    st.warning("Pick at least one site.")
    st.stop()

labels = token_labels(prompt.tokens)
position = labels.index(st.selectbox("predict the token after", labels, index=len(labels) - 1))
ids = tuple(prompt.ids.tolist())  # what the model sees: the key of results every session shares
try:
    predictions = cached_job(("predictions", str(run), ids, position), lambda: live.predictions(prompt, position),
                             "running the model")
except UserError as exc:
    st.error(public(exc, run))
    st.stop()
shown = live.decode([i for i, _ in predictions])
st.caption("model's top predictions: " + ", ".join(f"{token!r} {p:.1%}" for token, (_, p) in zip(shown, predictions)))
left, right = st.columns(2)
target_text = left.text_input("target token (text with its leading space, or #id)", value=f"#{predictions[0][0]}")
minus_text = right.text_input("minus the logit of (optional)", value="")
rows = st.slider("rows", 10, 100, 25)
try:
    target = Target(position, live.token_id(target_text), live.token_id(minus_text) if minus_text.strip() else None)
    value, table = cached_job(("attribution", str(run), ids, target, tuple(chosen), rows),
                              lambda: live.attribute(prompt, target, tuple(chosen), rows), "computing gradients")
    table = pd.DataFrame(table)  # its own frame: the columns are shared with other sessions, this page adds to it
except UserError as exc:
    st.error(public(exc, run))
    st.stop()

named = live.decode([target.token] + ([target.minus_token] if target.minus_token is not None else []))
what = " − ".join(repr(token) for token in named)
st.metric(f"target: logit of {what} after token {position}", f"{value:.3f}")
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

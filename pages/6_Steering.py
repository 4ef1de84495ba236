"""Steering: add or clamp SAE features while the model answers, next to the unsteered answer; sweep the strength."""

import streamlit as st

from explorer.state import (
    live_job,
    max_new_tokens,
    open_live_run_or_stop,
    page_header,
    prompt_chars,
    public,
    run_annotations,
)
from sae_core.errors import UserError
from sae_core.features.annotations import presets as annotated_presets
from sae_core.interventions.steering import FeatureEdit

page_header("Steering")
run, live, store = open_live_run_or_stop()
sites = {site.short: site for site in live.sites()}
names = list(sites)
focus_sae = st.query_params.get("sae") if st.query_params.get("sae") in names else names[0]
focus_feature = int(st.query_params["feature"]) if st.query_params.get("feature", "").isdigit() else 0

presets = {name: [FeatureEdit(sites[e.sae], e.feature, e.strength, e.mode) for e in preset.edits]
           for name, preset in annotated_presets(run_annotations(run)[0]).items() if all(e.sae in sites for e in preset.edits)}


def apply_preset() -> None:
    """Fill the feature rows from the chosen preset (a widget callback, so it runs before the widgets exist)."""
    chosen_edits = presets.get(st.session_state["preset"], [])
    if chosen_edits:
        st.session_state["n_edits"] = len(chosen_edits)
        for i, edit in enumerate(chosen_edits):
            st.session_state.update({f"site-{i}": edit.site.short, f"feature-{i}": edit.feature, f"mode-{i}": edit.mode,
                                     f"strength-{i}": round(edit.strength, 2)})


# widget defaults, once per session: a feature link (?sae=&feature=) fills the first row
st.session_state.setdefault("n_edits", 1)
for i in range(3):
    st.session_state.setdefault(f"site-{i}", focus_sae if i == 0 else names[0])
    st.session_state.setdefault(f"feature-{i}", focus_feature if i == 0 else 0)
    st.session_state.setdefault(f"mode-{i}", "add")
    st.session_state.setdefault(f"strength-{i}", 8.0)

message = st.text_area("message", value="Tell me about your favourite city.", height=90, max_chars=prompt_chars())
chat = st.checkbox("as a user message in the model's chat template", value=True)
if presets:
    st.selectbox("preset", ["none", *presets], key="preset", on_change=apply_preset,
                 help="feature sets from the run's annotations (e.g. `sae-explorer refusal study` writes its features "
                      "at the strength where they steered best)")
n_edits = st.number_input("features to steer with", min_value=1, max_value=3, key="n_edits")
edits = []
for i in range(int(n_edits)):
    a, b, c, d = st.columns([2, 2, 2, 2])
    site = a.selectbox("site", names, key=f"site-{i}")
    feature = b.number_input("feature", min_value=0, key=f"feature-{i}")
    mode = c.selectbox("mode", ["add", "clamp"], key=f"mode-{i}",
                       help="add: strength × the feature's decoder direction at every position; clamp: set its activation")
    strength = d.number_input("strength", step=1.0, key=f"strength-{i}")
    edits.append(FeatureEdit(sites[site], int(feature), float(strength), mode))
    if store is not None:
        st.caption(f"{site} #{int(feature)}: {store.describe(site, [int(feature)]).get(int(feature), '')}")
longest = max_new_tokens()
max_new = st.slider("new tokens", min(8, longest), longest, min(48, longest), help="this server's limit is the slider's end")
MAX_SWEEP = 8


def answer(with_edits: list[FeatureEdit]) -> str:
    return live.generate(message, with_edits, max_new, chat)


if st.button("generate"):
    try:
        with live_job("generating twice (unsteered and steered)"):
            plain, steered = answer([]), answer(edits)
    except UserError as exc:
        st.error(public(exc, run))
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
        if len(strengths) > MAX_SWEEP:
            st.error(f"a sweep takes at most {MAX_SWEEP} strengths; you gave {len(strengths)}")
            st.stop()
        rows = []
        progress = st.progress(0.0, text="generating …")
        try:
            with live_job(f"generating {len(strengths)} answers"):
                for i, value in enumerate(strengths):
                    first = edits[0]
                    rows.append({"strength": value, "answer": answer([FeatureEdit(first.site, first.feature, value, first.mode)])})
                    progress.progress((i + 1) / len(strengths), text=f"strength {value}")
        except UserError as exc:
            st.error(public(exc, run))
            st.stop()
        st.dataframe(rows, hide_index=True)

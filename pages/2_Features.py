"""Features: search and filter a run's features, and each feature's page (deep link: ?sae=L14R&feature=123)."""

import streamlit as st

from explorer.feature_view import (
    escape_markdown,
    example_groups,
    feature_link,
    histogram_figure,
    logit_table,
    neighbour_table,
    summary_line,
)
from explorer.state import open_feature_store_or_stop, page_header, refusal_notes
from sae_core.errors import UserError
from sae_core.features.reader import SORTABLE

page_header("Features")
run, store = open_feature_store_or_stop()

saes = store.saes()
names = list(saes.short_name)
marks = refusal_notes(run)
link_column = st.column_config.LinkColumn("feature", display_text=r"feature=(\d+)")


def show_feature(sae: str, feature: int) -> None:
    try:
        page = store.feature(sae, feature)
    except UserError as exc:
        st.error(str(exc))
        return
    st.subheader(f"{page.sae['short_name']} · feature {feature}")
    st.markdown(f"**{escape_markdown(page.feature['label'])}**")
    st.caption(f"{page.sae['hook_name']} · {summary_line(page)}")
    short = page.sae["short_name"]
    st.markdown(f"[see it on your own text →]({feature_link(short, feature, page='Prompt')}) · "
                f"[steer with it →]({feature_link(short, feature, page='Steering')})")
    if (short, feature) in marks:
        st.info(f"{marks[(short, feature)]} — found by `sae-explorer refusal study` (see {run}/refusal/report.md)")
    if page.feature["dead"]:
        st.warning("This feature never fired on the precompute tokens: it has no examples.")
    left, right = st.columns([3, 2])
    left.plotly_chart(histogram_figure(page), width="stretch")
    with right:
        up, down = st.columns(2)
        up.caption("promotes (top logit effects)")
        up.dataframe(logit_table(page.top_logits), hide_index=True, height=250)
        down.caption("suppresses (bottom logit effects)")
        down.dataframe(logit_table(page.bottom_logits), hide_index=True, height=250)
    for title, lines in example_groups(page):
        with st.expander(title, expanded=title.startswith("Top")):
            st.markdown("".join(lines), unsafe_allow_html=True)
    cos, coact = st.columns(2)
    for column, kind, title in ((cos, "decoder_cosine", "nearest by decoder cosine"), (coact, "coactivation", "fires with (Jaccard)")):
        column.caption(title)
        if kind in page.neighbours and not page.neighbours[kind].empty:
            column.dataframe(neighbour_table(page.neighbours[kind], page.sae["short_name"]), hide_index=True,
                             column_config={"feature": link_column})
        else:
            column.write("none")


with st.sidebar:
    st.caption(f"run `{run}` · {int(saes.d_sae.sum()):,} features in {len(names)} SAEs")
    chosen = st.multiselect("SAEs", names, default=[])
    min_density = st.number_input("min density", min_value=0.0, max_value=1.0, value=0.0, format="%.6f")
    max_density = st.number_input("max density", min_value=0.0, max_value=1.0, value=1.0, format="%.6f")
    min_max_act = st.number_input("min max activation", min_value=0.0, value=0.0)
    include_dead = st.checkbox("include dead features", value=False)
    sort_by = st.selectbox("sort by", SORTABLE, index=0)
    descending = st.checkbox("descending", value=True)

sae_ids = [store.sae_id(n) for n in chosen] or None
params = st.query_params
if "sae" in params and "feature" in params:
    st.markdown("[← back to the feature list](Features)")
    try:
        show_feature(params["sae"], int(params["feature"]))
    except ValueError:
        st.error(f"feature must be a number, got {params['feature']!r}")
    st.stop()

modes = ["label text", "token", "feature id"] + (["refusal features"] if marks else [])
mode = st.radio("search", modes, horizontal=True)
if mode == "refusal features":
    rows = [{"sae": sae, "feature": feature_link(sae, f), "note": note, "label": store.labels(sae, [f]).get(f, "")}
            for (sae, f), note in marks.items() if not chosen or sae in chosen]
    st.caption(f"{len(rows)} feature(s) marked by the run's refusal study")
    st.dataframe(rows, hide_index=True, column_config={"feature": link_column})
    st.stop()
query = st.text_input("query", placeholder={"label text": "e.g. department", "token": "e.g.  the", "feature id": "e.g. L14R 123"}[mode])
if st.button("random feature"):
    sae_id, feature = store.random_feature(chosen[0] if len(chosen) == 1 else None)
    st.query_params.update({"sae": names[sae_id], "feature": str(feature)})
    st.rerun()

if query and mode == "feature id":
    parts = query.replace("#", " ").split()
    if len(parts) != 2 or not parts[1].isdigit():
        st.error("write an SAE and a feature number, e.g. `L14R 123`")
        st.stop()
    st.query_params.update({"sae": parts[0], "feature": parts[1]})
    st.rerun()
if query:
    found = store.search_label(query, saes=sae_ids, limit=200) if mode == "label text" else store.search_token(query, saes=sae_ids, limit=200)
    st.caption(f"{len(found)} feature(s) found" + (" (first 200)" if len(found) == 200 else ""))
else:
    found = store.list_features(saes=sae_ids, min_density=min_density or None, max_density=max_density if max_density < 1 else None,
                                min_max_act=min_max_act or None, include_dead=include_dead, sort_by=sort_by,
                                descending=descending, limit=200)
if found.empty:
    st.info("No features match.")
    st.stop()
if marks:
    found = found.assign(refusal=[marks.get((s, int(f)), "") for s, f in zip(found["sae"], found["feature"])])
found = found.assign(feature=[feature_link(s, f) for s, f in zip(found["sae"], found["feature"])])
st.dataframe(found.drop(columns=["sae_id"]), hide_index=True, column_config={"feature": link_column,
             "density": st.column_config.NumberColumn(format="%.5f")})

"""Features: search and filter a run's features, and each feature's page (deep link: ?sae=L14R&feature=123)."""

import streamlit as st

from explorer.explanation_view import (
    BASELINES,
    SCORE_HELP,
    explanation_markdown,
    provenance,
    score_table,
    similar_table,
    verdict,
)
from explorer.feature_view import (
    escape_markdown,
    example_groups,
    feature_link,
    histogram_svg,
    logit_html,
    neighbour_table,
    release_comparison,
    release_prompts,
    summary_line,
    where_it_reads,
)
from explorer.state import (
    open_feature_store_or_stop,
    page_header,
    public,
    run_annotations,
    sentence_embedder,
    shared_lookup,
)
from sae_core.errors import UserError
from sae_core.features.annotations import AnnotationError, add_note, add_to_list, export_list, merged
from sae_core.features.reader import SCORES, SORTABLE
from sae_core.interp.semantic_search import search_by_meaning

page_header("Features")
run, store = open_feature_store_or_stop()

saes = store.saes()
names = list(saes.short_name)
annotations, annotation_problems = run_annotations(run)
notes = merged(annotations)
link_column = st.column_config.LinkColumn("feature", display_text=r"feature=(\d+)")
score_columns = {score: st.column_config.NumberColumn(format="%.2f", help=SCORE_HELP[score]) for score in SCORES}


def show_explanations(page) -> None:
    """The newest explanation with its scores beside both baselines; older ones folded away."""
    explanations = page.explanations
    if explanations.empty:
        st.caption(f"No explanation yet: `sae-explorer explain {run.name} --saes {page.sae['short_name']} "
                   f"--features {page.feature['feature']},`")
        return
    rows = explanations.to_dict("records")
    st.markdown(explanation_markdown(rows[0]))
    st.caption(provenance(rows[0]) + " · " + verdict(rows[0]))
    st.dataframe(score_table(rows[0]), hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.2f") for c in (*BASELINES.values(), "margin")
    })
    if len(rows) > 1:
        with st.expander(f"{len(rows) - 1} earlier explanation(s)"):
            for row in rows[1:]:
                st.markdown(explanation_markdown(row))
                st.caption(provenance(row))
                st.dataframe(score_table(row), hide_index=True)


def show_annotations(sae: str, feature: int) -> None:
    """What studies and people noted about this feature, and a form to add a note, tags or a list membership
    (saved with the run in `annotations/user.json`, never in the read-only feature file)."""
    mine = notes.get((sae, feature))
    if mine is not None:
        for source, text in mine.notes:
            st.info(f"{escape_markdown(text)} — *{escape_markdown(source)}*")
        extra = ([f"tags: {escape_markdown(', '.join(mine.tags))}"] if mine.tags else []) + (
            [f"in lists: {escape_markdown(', '.join(mine.lists))}"] if mine.lists else [])
        if extra:
            st.caption(" · ".join(extra))
    with st.expander("annotate this feature"):
        with st.form(f"annotate-{sae}-{feature}", clear_on_submit=True):
            text = st.text_input("note", max_chars=500)
            tags = st.text_input("tags", max_chars=200, help="comma-separated")
            listed = st.text_input("add to list", max_chars=100, help="a list's name; a new name starts a list")
            if st.form_submit_button("save"):
                try:
                    if not (text.strip() or tags.strip() or listed.strip()):
                        raise AnnotationError("write a note, a tag or a list's name first")
                    if text.strip() or tags.strip():
                        add_note(run, sae, feature, text, tags.split(","))
                    if listed.strip():
                        add_to_list(run, listed, sae, feature)
                except UserError as exc:
                    st.error(public(exc, run))
                except OSError as exc:
                    st.error(f"could not save the annotation beside the run ({exc.strerror}); the run folder may be read-only")
                else:
                    st.rerun()


def show_release(page) -> None:
    """What a published release says of this feature (`sae-explorer import-stats`), beside this run's numbers."""
    release = page.release
    if release.empty:
        return
    st.caption("this run's statistics beside the release's own (over the release's corpus; empty where it gives none)")
    st.dataframe(release_comparison(page), hide_index=True, column_config={
        "density": st.column_config.NumberColumn(format="%.6f"), "fires": st.column_config.NumberColumn(format="%d")})
    origins = sorted(set(release.examples["origin"]) | set(release.features["origin"]))
    summaries = {row["origin"]: row["summary"] for row in release.features.to_dict("records")}
    for origin in origins:
        prompts = release_prompts(page, origin)
        with st.expander(f"release's top prompts ({len(prompts)}) · {origin}", expanded=False):
            if prompts.empty:
                st.caption("the release lists no prompts for this feature")
            else:
                st.dataframe(prompts, hide_index=True, column_config={"text": st.column_config.TextColumn(width="large")})
            if summaries.get(origin):
                st.caption("the release's summary")
                st.json(summaries[origin], expanded=False)


def open_feature(sae: str, feature: int) -> None:
    """Move to another feature inside this session (a rerun, not a page load); the URL follows."""
    st.query_params.update({"sae": sae, "feature": str(int(feature))})
    st.rerun()


def feature_table(frame, targets: list[tuple[str, int]], key: str, **options) -> None:
    """A table of features; clicking a row opens that feature in place (the link column opens it in a new tab)."""
    event = st.dataframe(frame, hide_index=True, on_select="rerun", selection_mode="single-row", key=key, **options)
    if event.selection.rows:
        open_feature(*targets[event.selection.rows[0]])


def show_similar(sae: str, feature: int) -> None:
    """Features like this one, by the same sentence vectors as search by meaning."""
    try:
        similar = shared_lookup(store, "similar", (sae, feature), lambda: store.similar_features(sae, feature, limit=10))
    except UserError as exc:
        st.caption(public(exc, run))
        return
    if similar.empty:
        st.caption(f"No feature vectors in this file: `sae-explorer embed {run.name}` adds them.")
        return
    feature_table(similar_table(similar), list(zip(similar["sae"], similar["feature"])), f"similar-{sae}-{feature}",
                  column_config={"feature": link_column, **score_columns})


def show_feature(sae: str, feature: int) -> None:
    try:
        page = shared_lookup(store, "feature", (sae, feature), lambda: store.feature(sae, feature))
    except UserError as exc:
        st.error(public(exc, run))
        return
    st.subheader(f"{page.sae['short_name']} · feature {feature}")
    st.markdown(f"**{escape_markdown(page.feature['label'])}**")
    st.caption(f"{where_it_reads(page.sae)} · {summary_line(page)}")
    show_explanations(page)
    short = page.sae["short_name"]
    st.markdown(f"[see it on your own text →]({feature_link(short, feature, page='Prompt')}) · "
                f"[steer with it →]({feature_link(short, feature, page='Steering')})")
    show_annotations(short, feature)
    if page.feature["dead"]:
        st.warning("This feature never fired on the precompute tokens: it has no examples.")
    show_release(page)
    left, right = st.columns([3, 2])
    left.markdown(histogram_svg(page), unsafe_allow_html=True)
    with right:
        up, down = st.columns(2)
        up.caption("promotes (top logit effects)")
        up.markdown(logit_html(page.top_logits, "promoted tokens"), unsafe_allow_html=True)
        down.caption("suppresses (bottom logit effects)")
        down.markdown(logit_html(page.bottom_logits, "suppressed tokens"), unsafe_allow_html=True)
    for title, lines in example_groups(page):
        with st.expander(title, expanded=title.startswith("Top")):
            st.markdown("".join(lines), unsafe_allow_html=True)
    cos, coact = st.columns(2)
    for column, kind, title in ((cos, "decoder_cosine", "nearest by decoder cosine"), (coact, "coactivation", "fires with (Jaccard)")):
        column.caption(title)
        neighbours = page.neighbours.get(kind)
        if neighbours is not None and not neighbours.empty:
            with column:
                feature_table(neighbour_table(neighbours, short), [(short, f) for f in neighbours["feature"]],
                              f"{kind}-{short}-{feature}", column_config={"feature": link_column})
        else:
            column.write("none")
    st.caption("features like this one (sentence embeddings of explanations and examples, all SAEs); "
               "click a row to open it")
    show_similar(page.sae["short_name"], feature)


with st.sidebar:
    st.caption(f"run `{run.name}` · {int(saes.d_sae.sum()):,} features in {len(names)} SAEs")
    chosen = st.multiselect("SAEs", names, default=[])
    min_density = st.number_input("min density", min_value=0.0, max_value=1.0, value=0.0, format="%.6f")
    max_density = st.number_input("max density", min_value=0.0, max_value=1.0, value=1.0, format="%.6f")
    min_max_act = st.number_input("min max activation", min_value=0.0, value=0.0)
    include_dead = st.checkbox("include dead features", value=False)
    explained_only = st.checkbox("explained features only", value=False)
    score_name = st.selectbox("filter by score", ["none", *SCORES], index=0)
    min_score = st.slider("minimum score", 0.0, 1.0, 0.5, 0.05, disabled=score_name == "none")
    sort_by = st.selectbox("sort by", SORTABLE, index=0)
    descending = st.checkbox("descending", value=True)

sae_ids = [store.sae_id(n) for n in chosen] or None
params = st.query_params
if "sae" in params and "feature" in params:
    if st.button("← back to the feature list"):
        for key in ("sae", "feature"):
            del st.query_params[key]
        st.rerun()
    try:
        show_feature(params["sae"], int(params["feature"]))
    except ValueError:
        st.error(f"feature must be a number, got {params['feature']!r}")
    st.stop()

has_vectors = bool(store.embedder_settings)
modes = (["meaning"] if has_vectors else []) + ["label or explanation", "token", "feature id"] + (["annotated features"] if notes else [])
mode = st.radio("search", modes, horizontal=True)
if not has_vectors:
    st.caption(f"Search by meaning needs feature vectors: `sae-explorer embed {run.name}` adds them.")
for problem in annotation_problems:
    st.warning(problem)
if mode == "annotated features":
    lists = sorted({name for item in notes.values() for name in item.lists})
    tags = sorted({tag for item in notes.values() for tag in item.tags})
    show = st.selectbox("show", ["every annotated feature", *(f"list: {n}" for n in lists), *(f"tag: {t}" for t in tags)])
    kind, _, name = show.partition(": ")
    keys = [key for key, item in notes.items() if key[0] in names and (not chosen or key[0] in chosen)
            and (kind == "list" and name in item.lists or kind == "tag" and name in item.tags or not name)]
    labels = {sae: store.describe(sae, [f for s, f in keys if s == sae]) for sae in {s for s, _ in keys}}
    rows = [{"sae": sae, "feature": feature_link(sae, f), "note": "; ".join(text for _, text in notes[(sae, f)].notes),
             "tags": ", ".join(notes[(sae, f)].tags), "lists": ", ".join(notes[(sae, f)].lists),
             "label": labels[sae].get(f, "")} for sae, f in keys]
    st.caption(f"{len(rows)} annotated feature(s), from `annotations/` beside the run's feature file")
    st.dataframe(rows, hide_index=True, column_config={"feature": link_column})
    if kind == "list":
        st.download_button("export this list as JSON", export_list(annotations, name), file_name=f"{name}.json",
                           mime="application/json")
    st.stop()
placeholders = {"meaning": "e.g. legal documents, or numbers with thousands separators", "label or explanation": "e.g. department",
                "token": "e.g.  the", "feature id": "e.g. L14R 123"}
query = st.text_input("query", placeholder=placeholders[mode], max_chars=1000)
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
if query and mode == "meaning":
    try:
        embedder = sentence_embedder((store.embedder_settings or {}).get("name"))
        found = search_by_meaning(store, embedder, query, saes=sae_ids, limit=100)
    except UserError as exc:
        st.error(public(exc, run))
        st.stop()
    st.caption(f"the {len(found)} features whose explanation or examples mean the most like the query, across "
               f"{'the chosen SAEs' if sae_ids else 'all SAEs'} (cosine similarity of sentence embeddings)"
               + (f" · {store.vector_index_problem}" if store.vector_index_problem else ""))
    feature_table(similar_table(found), list(zip(found["sae"], found["feature"])), f"meaning-{query}",
                  column_config={"feature": link_column, **score_columns})
    st.stop()
if query:
    search = store.search_text if mode == "label or explanation" else store.search_token
    found = search(query, saes=sae_ids, limit=200)
    st.caption(f"{len(found)} feature(s) found" + (" (first 200)" if len(found) == 200 else "")
               + (f" · {store.search_index_problem}" if store.search_index_problem else ""))
else:
    found = store.list_features(saes=sae_ids, min_density=min_density or None, max_density=max_density if max_density < 1 else None,
                                min_max_act=min_max_act or None, include_dead=include_dead, explained_only=explained_only,
                                min_score=None if score_name == "none" else (score_name, min_score), sort_by=sort_by,
                                descending=descending, limit=200)
if found.empty:
    st.info("No features match.")
    st.stop()
if notes:
    found = found.assign(annotations=[
        "; ".join([text for _, text in notes[key].notes] + notes[key].tags) if key in notes else ""
        for key in zip(found["sae"], found["feature"].astype(int))])
targets = list(zip(found["sae"], found["feature"]))
found = found.assign(feature=[feature_link(s, f) for s, f in zip(found["sae"], found["feature"])])
st.caption("click a row to open the feature")
feature_table(found.drop(columns=["sae_id"]), targets, "feature-list", column_config={
    "feature": link_column, **score_columns, "density": st.column_config.NumberColumn(format="%.5f")})

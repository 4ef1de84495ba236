"""Circuits: the sparse feature circuit behind one prediction, drawn layer by layer; thresholds, ablation, export."""

import json
from dataclasses import asdict

import streamlit as st

from explorer.circuit_view import clicked_feature, curve_figure, graph_figure, node_table, read_graph, visible
from explorer.navigation import PAGES
from explorer.state import cached_job, live_job, open_live_run_or_stop, page_header, public
from explorer.target_picker import choose_target_or_stop, target_label
from sae_core.circuits.graph import CircuitOptions, label_nodes
from sae_core.errors import UserError

page_header("Circuits")
run, live, store = open_live_run_or_stop()
names = [site.short for site in live.sites()]
link_column = st.column_config.LinkColumn("feature", display_text=r"feature=(\d+)")

shared = st.file_uploader("open a shared circuit (JSON)", type=["json"])
if shared is not None:
    try:
        graph = read_graph(shared.getvalue())
    except UserError as exc:
        st.error(str(exc))
        st.stop()
    st.caption(f"a shared graph: {len(graph['nodes'])} nodes, {len(graph['edges'])} edges over {', '.join(graph['sites'])}")
else:
    choice = choose_target_or_stop(run, live, names)
    prompt, chosen, ids, target = choice.prompt, choice.sites, choice.ids, choice.target
    with st.expander("how the circuit is found"):
        method = st.radio("node effects", ["atp", "ig"], horizontal=True,
                          format_func={"atp": "attribution patching", "ig": "integrated gradients"}.get)
        steps = st.slider("integrated-gradient steps", 2, 32, 10, disabled=method != "ig")
        ablate_to = st.radio("a removed node becomes", ["mean", "zero"], horizontal=True,
                             format_func={"mean": "its mean on held-out text", "zero": "zero"}.get)
        positions = st.radio("positions", ["keep", "sum"], horizontal=True,
                             format_func={"keep": "a node per token", "sum": "each feature summed over the tokens"}.get)
        max_nodes = st.slider("nodes kept (largest |effect|)", 5, 100, 30)
    settings = asdict(CircuitOptions(method=method, ig_steps=steps, ablate_to=ablate_to, max_nodes=max_nodes,
                                     positions=positions))
    try:
        graph = cached_job(("circuit", str(run), ids, target, tuple(chosen), tuple(sorted(settings.items()))),
                           lambda: live.circuit(prompt, target, tuple(chosen), settings), "finding the circuit")
    except UserError as exc:
        st.error(public(exc, run))
        st.stop()
    if store is not None and not any(n.get("label") for n in graph["nodes"]):
        graph = json.loads(json.dumps(graph))  # this session's copy: the cached graph is shared
        label_nodes(graph["nodes"], store.describe)
    st.metric(f"metric: {target_label(live, target)}", f"{graph['metric']:.3f}")

top_effect = max((abs(n["effect"]) for n in graph["nodes"]), default=0.0)
top_weight = max((abs(e["weight"]) for e in graph["edges"]), default=0.0)
left, right = st.columns(2)
node_threshold = left.slider("node threshold (|effect|)", 0.0, float(top_effect) or 1.0, 0.0, format="%.4f")
edge_threshold = right.slider("edge threshold (|weight|)", 0.0, float(top_weight) or 1.0, 0.0, format="%.4f")
nodes, edges = visible(graph, node_threshold, edge_threshold)
st.caption(f"{len(nodes)} nodes and {len(edges)} edges shown · red adds to the metric, blue takes from it · squares are "
           "SAE error terms (what the SAE does not reconstruct) · hover a node for its feature, click it to open it")
event = st.plotly_chart(graph_figure(graph, node_threshold, edge_threshold), use_container_width=True, on_select="rerun",
                        selection_mode="points", key="circuit-graph")
clicked, params = clicked_feature(graph, list(event.selection.points) if event else [])
if params:
    st.switch_page(next(p.path for p in PAGES if p.script == "2_Features.py"), query_params=params)
elif clicked is not None:
    st.info(f"{clicked['site']}'s error term at {clicked['token']!r} is what the SAE does not reconstruct: it has no feature page")
if graph["curve"]:
    st.caption("faithfulness: the metric with only the top-n nodes kept (the rest ablated); completeness: with them "
               "removed. 1 = the whole model, 0 = every node ablated.")
    st.plotly_chart(curve_figure(graph), use_container_width=True)
table = node_table(nodes)
st.dataframe(table, hide_index=True, column_config={"feature": link_column, "effect": st.column_config.NumberColumn(format="%+.4f")})
st.download_button("export the graph as JSON", json.dumps(graph, indent=1), file_name="circuit.json", mime="application/json")

if shared is None and nodes:
    options = [n["id"] for n in nodes]
    removed = st.multiselect("ablate these nodes and rerun the metric", options)
    if removed and st.button("ablate"):
        chosen_nodes = [n for n in nodes if n["id"] in removed]
        try:
            with live_job("ablating"):
                before, after = live.without_nodes(prompt, target, tuple(chosen), settings,
                                                   [(n["site"], n["position"], -1 if n["error"] else n["feature"]) for n in chosen_nodes])
        except UserError as exc:
            st.error(public(exc, run))
            st.stop()
        predicted = sum(n["effect"] for n in chosen_nodes)
        st.metric("metric with those nodes ablated", f"{after:.3f}", delta=f"{after - before:+.3f}")
        st.caption(f"their effects predicted a change of {-predicted:+.3f} (first order; nodes interact)")

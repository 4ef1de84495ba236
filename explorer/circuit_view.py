"""What the Circuits page shows, built from a circuit graph (`sae_core.circuits.graph.find_circuit`'s JSON):
the graph drawn layer by layer, its node table, the faithfulness curve, and a shared graph read back.

No Streamlit here: the page calls these, and tests call them directly.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from sae_core.circuits.graph import GRAPH_VERSION
from sae_core.circuits.nodes import ALL_POSITIONS
from sae_core.errors import UserError

from .feature_view import feature_link, feature_params

POSITIVE, NEGATIVE = "#d62728", "#1f77b4"
"""Colours of nodes and edges that add to the metric and that take from it."""
NODE_KEYS = {"id", "site", "position", "token", "feature", "error", "effect"}
MAX_GRAPH_BYTES = 20 << 20


def read_graph(data: bytes) -> dict[str, Any]:
    """A circuit graph from a shared JSON file, checked enough to draw (a UserError saying what is wrong)."""
    if len(data) > MAX_GRAPH_BYTES:
        raise UserError(f"the file is {len(data) / 2**20:.1f} MiB; a circuit graph is at most {MAX_GRAPH_BYTES >> 20} MiB")
    try:
        graph = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"this is not a circuit graph: not JSON ({e})") from None
    if not isinstance(graph, dict) or graph.get("version") != GRAPH_VERSION:
        raise UserError(f"this is not a circuit graph of version {GRAPH_VERSION} (`sae-explorer circuit` writes them)")
    nodes, edges = graph.get("nodes"), graph.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list) or not all(isinstance(n, dict) and NODE_KEYS <= set(n) for n in nodes):
        raise UserError("this circuit graph's nodes or edges are malformed")
    ids = {n["id"] for n in nodes}
    if not all(isinstance(e, dict) and e.get("source") in ids and e.get("target") in ids for e in edges):
        raise UserError("this circuit graph has edges between nodes it does not list")
    return graph


def visible(graph: dict[str, Any], node_threshold: float, edge_threshold: float) -> tuple[list[dict], list[dict]]:
    """The nodes at or above `node_threshold` |effect| and the edges between them at or above `edge_threshold`."""
    nodes = [n for n in graph["nodes"] if abs(n["effect"]) >= node_threshold]
    ids = {n["id"] for n in nodes}
    edges = [e for e in graph["edges"] if abs(e["weight"]) >= edge_threshold and e["source"] in ids and e["target"] in ids]
    return nodes, edges


def summed(graph: dict[str, Any]) -> bool:
    """Whether the graph's nodes are summed over positions (one per site and feature)."""
    return graph.get("settings", {}).get("positions") == "sum"


CELL_LINE = 6
"""Nodes of one site and token per line of its cell; more wrap onto further lines within the site's row."""


def layout_nodes(nodes: list[dict], sites: list[str]) -> dict[str, tuple[float, float]]:
    """(x, y) of each node: x its token position, y its site's row in forward-pass order. Several nodes at one site
    and token fill that cell largest |effect| first, `CELL_LINE` a line, lines stacked downwards within the row;
    nodes summed over positions stand side by side in their site's row, largest |effect| first."""
    rows = {site: i for i, site in enumerate(sites)}
    groups: dict[tuple[str, int], list[dict]] = {}
    for node in nodes:
        groups.setdefault((node["site"], node["position"]), []).append(node)
    out = {}
    for (site, position), group in groups.items():
        group.sort(key=lambda n: -abs(n["effect"]))
        if position == ALL_POSITIONS:
            out.update({node["id"]: (float(i), rows.get(site, 0)) for i, node in enumerate(group)})
            continue
        lines = -(-len(group) // CELL_LINE)
        height = min(0.6, 0.15 * (lines - 1))
        for i, node in enumerate(group):
            line, place = divmod(i, CELL_LINE)
            across = min(CELL_LINE, len(group) - line * CELL_LINE)  # nodes on this line
            width = min(0.8, 0.16 * (across - 1))
            dx = 0.0 if across == 1 else -width / 2 + width * place / (across - 1)
            dy = 0.0 if lines == 1 else height / 2 - height * line / (lines - 1)
            out[node["id"]] = (position + dx, rows.get(site, 0) + dy)
    return out


def graph_figure(graph: dict[str, Any], node_threshold: float = 0.0, edge_threshold: float = 0.0) -> go.Figure:
    """The circuit drawn layer by layer: x = token, y = site; node size by |effect|, edge width by |weight|, colour by
    sign (red adds to the metric, blue takes from it), error nodes as squares; hover names each node."""
    nodes, edges = visible(graph, node_threshold, edge_threshold)
    sites = graph["sites"]
    where = layout_nodes(nodes, sites)
    fig = go.Figure()
    top_weight = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    for edge in edges:
        (x0, y0), (x1, y1) = where[edge["source"]], where[edge["target"]]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.5 + 5 * abs(edge["weight"]) / top_weight,
                                       "color": POSITIVE if edge["weight"] > 0 else NEGATIVE}, opacity=0.45))
    top_effect = max((abs(n["effect"]) for n in nodes), default=1.0) or 1.0
    for error in (False, True):
        chosen = [n for n in nodes if n["error"] == error]
        if not chosen:
            continue
        fig.add_trace(go.Scatter(
            x=[where[n["id"]][0] for n in chosen], y=[where[n["id"]][1] for n in chosen], mode="markers",
            name="SAE error terms" if error else "features", customdata=[n["id"] for n in chosen],
            marker={"size": [8 + 30 * abs(n["effect"]) / top_effect for n in chosen], "symbol": "square" if error else "circle",
                    "color": [POSITIVE if n["effect"] > 0 else NEGATIVE for n in chosen], "line": {"width": 1, "color": "#333"}},
            hovertext=[hover(n) for n in chosen], hoverinfo="text",
        ))
    tokens = graph["tokens"]
    if summed(graph):
        widest = max((x for x, _ in where.values()), default=0.0)
        xaxis = {"title": "each site's nodes, summed over positions, largest |effect| first", "showticklabels": False,
                 "range": [-0.7, widest + 0.7]}
    else:
        xaxis = {"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [repr(t)[1:-1] for t in tokens],
                 "range": [-0.7, len(tokens) - 0.3]}
    fig.update_layout(
        height=120 + 70 * len(sites), margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": 1.08},
        xaxis=xaxis,
        yaxis={"tickmode": "array", "tickvals": list(range(len(sites))), "ticktext": sites, "range": [-0.6, len(sites) - 0.4]},
    )
    return fig


def clicked_feature(graph: dict[str, Any], points: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The node clicked on the graph (the first selected point that is a node) and, when it is a feature, the query
    parameters of its feature page (empty for an error term, which has none)."""
    by_id = {n["id"]: n for n in graph["nodes"]}
    node = next((by_id[p["customdata"]] for p in points if p.get("customdata") in by_id), None)
    if node is None or node["error"]:
        return node, {}
    return node, feature_params(node["site"], node["feature"])


def hover(node: dict[str, Any]) -> str:
    """A node's hover text: site, token, feature and its label (or the error term), effect."""
    what = "SAE error term" if node["error"] else f"feature {node['feature']}" + (f": {node['label']}" if node.get("label") else "")
    where = "summed over positions" if node["position"] == ALL_POSITIONS else f"{node['token']!r} (position {node['position']})"
    return f"{node['site']} · {where}<br>{what}<br>effect {node['effect']:+.4f}"


def node_table(nodes: list[dict]) -> pd.DataFrame:
    """The nodes as a table with a link to each feature's page (error terms have none)."""
    return pd.DataFrame({
        "site": [n["site"] for n in nodes], "position": [n["position"] for n in nodes], "token": [n["token"] for n in nodes],
        "feature": [None if n["error"] else feature_link(n["site"], n["feature"]) for n in nodes],
        "node": ["error term" if n["error"] else str(n["feature"]) for n in nodes],
        "label": [n.get("label") or "" for n in nodes], "effect": [n["effect"] for n in nodes],
    })


def curve_figure(graph: dict[str, Any]) -> go.Figure:
    """Faithfulness (only the circuit kept) and completeness (the circuit removed) against circuit size."""
    curve = pd.DataFrame(graph["curve"])
    fig = go.Figure()
    for column, name in (("faithfulness", "faithfulness: only the circuit kept"), ("completeness", "completeness: the circuit removed")):
        fig.add_trace(go.Scatter(x=curve["nodes"], y=curve[column], mode="lines+markers", name=name))
    fig.update_layout(height=280, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis={"title": "nodes in the circuit", "type": "log"},
                      yaxis={"title": "metric, 0 = all ablated, 1 = model"}, legend={"orientation": "h", "y": 1.15})
    return fig

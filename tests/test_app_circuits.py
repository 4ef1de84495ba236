"""The Circuits page (Streamlit AppTest) on the tiny precomputed run: the graph, thresholds, ablation, a shared graph."""

from __future__ import annotations

import json

import pytest
from helpers import app_page

from explorer.circuit_view import clicked_feature, graph_figure, layout_nodes, read_graph, visible
from sae_core.errors import UserError

TEXT = "the river city music science history ocean language learning light"


@pytest.fixture(scope="module")
def graph(precomputed_run, tmp_path_factory):
    from sae_core.cli import main

    out = tmp_path_factory.mktemp("circuit") / "graph.json"
    assert main(["circuit", str(precomputed_run), "--prompt", TEXT, "--target", "#5", "--max-nodes", "10", "--mean-tokens",
                 "256", "--out", str(out), "--device", "cpu"]) == 0
    return json.loads(out.read_text())


def test_the_page_draws_the_circuit_and_ablates_a_node(monkeypatch, precomputed_run):
    at = app_page(monkeypatch, "7_Circuits.py", precomputed_run, timeout=120).run()
    at.text_area[0].set_value(TEXT).run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 2  # the graph and the faithfulness curve
    table = at.dataframe[0].value
    assert 0 < len(table) <= 30
    assert table["effect"].abs().is_monotonic_decreasing
    before = float(at.metric[0].value)
    at.multiselect[1].select(at.multiselect[1].options[0]).run()
    at.button[0].click().run()
    assert not at.exception
    assert at.metric[1].label == "metric with those nodes ablated" and at.metric[1].delta is not None
    assert float(at.metric[1].value) != before
    at.slider[-2].set_value(at.slider[-2].max).run()  # the node threshold at its top: one node left
    assert not at.exception and len(at.dataframe[0].value) == 1
    at.radio[2].set_value("sum").run()  # one node per feature, summed over the tokens
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert set(at.dataframe[0].value["position"]) == {-1}
    at.slider[-2].set_value(0.0).run()
    summed_before = float(at.metric[0].value)
    at.multiselect[1].select(at.multiselect[1].options[0]).run()  # a feature removed at every token
    at.button[0].click().run()
    assert not at.exception and at.metric[1].label == "metric with those nodes ablated"
    assert float(at.metric[1].value) != summed_before


def test_a_graph_summed_over_positions_is_drawn_one_row_per_site(precomputed_run, tmp_path):
    from sae_core.cli import main

    out = tmp_path / "summed.json"
    assert main(["circuit", str(precomputed_run), "--prompt", TEXT, "--target", "#5", "--positions", "sum", "--max-nodes",
                 "12", "--ablate-to", "zero", "--out", str(out), "--device", "cpu"]) == 0
    graph = read_graph(out.read_bytes())
    nodes, edges = visible(graph, 0.0, 0.0)
    where = layout_nodes(nodes, graph["sites"])
    for site in graph["sites"]:  # side by side in each site's row, largest |effect| first
        row = sorted((n for n in nodes if n["site"] == site), key=lambda n: where[n["id"]][0])
        assert [where[n["id"]][0] for n in row] == list(range(len(row)))
        assert [abs(n["effect"]) for n in row] == sorted((abs(n["effect"]) for n in row), reverse=True)
    figure = graph_figure(graph)
    assert figure.layout.xaxis.showticklabels is False and len(figure.data) == len(edges) + len({n["error"] for n in nodes})


def test_bad_input_is_explained(monkeypatch, precomputed_run):
    at = app_page(monkeypatch, "7_Circuits.py", precomputed_run, timeout=120).run()
    at.text_area[0].set_value(TEXT).run()
    at.text_input[0].set_value("river city music").run()
    assert not at.exception and "give exactly one token" in at.error[0].value
    at.text_area[0].set_value("").run()
    assert not at.exception and "the prompt is empty" in at.error[0].value


def test_a_shared_graph_reads_back_and_bad_files_are_refused(graph):
    assert read_graph(json.dumps(graph).encode()) == graph
    for bad, message in ((b"\xff", "not JSON"), (b"[]", "not a circuit graph"),
                         (json.dumps({**graph, "edges": [{"source": "x", "target": "y", "weight": 1}]}).encode(), "does not list")):
        with pytest.raises(UserError, match=message):
            read_graph(bad)
    nodes, edges = visible(graph, 0.0, 0.0)
    where = layout_nodes(nodes, graph["sites"])
    assert len(where) == len(nodes) and all(round(y) in range(len(graph["sites"])) and abs(y - round(y)) <= 0.3
                                            for _, y in where.values())
    figure = graph_figure(graph)
    assert len(figure.data) == len(edges) + len({n["error"] for n in nodes})
    strongest, _ = visible(graph, max(abs(n["effect"]) for n in graph["nodes"]), 0.0)
    assert len(strongest) == 1


def test_clicking_a_feature_node_names_its_feature_page(graph):
    feature = next(n for n in graph["nodes"] if not n["error"])
    edge_point = {"curve_number": 0, "x": 1.0, "y": 0.0}  # a point on an edge line carries no node id
    node, params = clicked_feature(graph, [edge_point, {"customdata": feature["id"]}])
    assert node == feature and params == {"sae": feature["site"], "feature": str(feature["feature"])}
    error = next((n for n in graph["nodes"] if n["error"]), None)
    if error is not None:
        assert clicked_feature(graph, [{"customdata": error["id"]}]) == (error, {})
    assert clicked_feature(graph, []) == (None, {})


def test_many_nodes_of_one_site_and_token_fill_their_cell_without_sharing_a_place():
    from explorer.circuit_view import CELL_LINE

    nodes = [{"id": f"L1M/2/{f}", "site": "L1M", "position": 2, "effect": float(f + 1)} for f in range(2 * CELL_LINE + 3)]
    nodes.append({"id": "L0R/2/0", "site": "L0R", "position": 2, "effect": 1.0})
    where = layout_nodes(nodes, ["L0R", "L1M"])
    cell = [where[n["id"]] for n in sorted(nodes[:-1], key=lambda n: -n["effect"])]
    assert len(set(cell)) == len(cell)  # no two nodes at one place
    assert all(1.5 <= x <= 2.5 and 0.6 < y < 1.4 for x, y in cell)  # within the token's column and the site's row
    assert [y for _, y in cell[:CELL_LINE]] == [max(y for _, y in cell)] * CELL_LINE  # the strongest on the top line
    assert where["L0R/2/0"] == (2.0, 0)  # a lone node stays at its cell's centre

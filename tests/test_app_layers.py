"""The Layers page (Streamlit AppTest) and its charts."""

from __future__ import annotations

from conftest import app_page

from explorer.layers_view import metric_by_layer, sparsity_fidelity
from sae_core.features.reader import FeatureStore


def test_charts_have_one_line_per_site(precomputed_run):
    with FeatureStore(precomputed_run) as store:
        summary = store.layer_summary()
    fig = metric_by_layer(summary, "l0")
    assert {trace.name for trace in fig.data} == {"residual stream", "MLP output", "attention output"}
    assert metric_by_layer(summary, "fvu") is None and sparsity_fidelity(summary) is None  # imported: no metrics
    summary["fvu"] = [0.1, 0.2, 0.3]
    scatter = sparsity_fidelity(summary)
    assert sorted(x for trace in scatter.data for x in trace.y) == [0.1, 0.2, 0.3]


def test_layers_page_renders_and_asks_for_metrics(monkeypatch, precomputed_run):
    at = app_page(monkeypatch, "4_Layers.py", precomputed_run).run()
    assert not at.exception
    assert "sae-explorer eval" in at.warning[0].value
    assert len(at.dataframe[0].value) == 3


def test_layers_page_without_a_feature_file(monkeypatch, tmp_path):
    at = app_page(monkeypatch, "4_Layers.py", tmp_path).run()
    assert not at.exception and "does not exist" in at.error[0].value

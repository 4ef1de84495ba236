"""The Layers page (Streamlit AppTest) and its charts."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer.layers_view import metric_by_layer, sparsity_fidelity
from explorer.state import RUN_ENV
from sae_core.features.reader import FeatureStore

ROOT = Path(__file__).resolve().parents[1]


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
    monkeypatch.setenv(RUN_ENV, str(precomputed_run))
    at = AppTest.from_file(str(ROOT / "pages" / "4_Layers.py"), default_timeout=60).run()
    assert not at.exception
    assert "sae-explorer eval" in at.warning[0].value
    assert len(at.dataframe[0].value) == 3


def test_layers_page_without_a_feature_file(monkeypatch, tmp_path):
    monkeypatch.setenv(RUN_ENV, str(tmp_path))
    at = AppTest.from_file(str(ROOT / "pages" / "4_Layers.py"), default_timeout=60).run()
    assert not at.exception and "does not exist" in at.error[0].value

"""The Layers page (Streamlit AppTest) and its charts."""

from __future__ import annotations

import json

import numpy as np
from conftest import app_page, heatmap_values

from explorer.layers_view import metric_by_layer, sparsity_fidelity
from sae_core.features.reader import FeatureStore
from sae_core.prompt_features import prompt_activations, strongest_features, tokenize_prompt
from sae_core.run_saes import open_run_saes

TEXT = "the river city music science history ocean language learning light"


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


def test_a_prompt_across_layers_matches_a_direct_encode(monkeypatch, precomputed_run, tiny_loaded):
    at = app_page(monkeypatch, "4_Layers.py", precomputed_run).run()
    assert not at.exception and len(at.get("plotly_chart")) == 3  # nothing live before the prompt is submitted
    at.text_area[0].set_value(TEXT)
    at.multiselect[0].set_value(["L0R", "L1M", "L1A"])
    at.slider[0].set_value(5)
    at.button[0].click().run()
    assert not at.exception
    opened = open_run_saes(precomputed_run, loaded=tiny_loaded, log=lambda m: None)
    prompt = tokenize_prompt(tiny_loaded, TEXT)
    acts = {site.short: a for site, a in prompt_activations(tiny_loaded, opened.saes, prompt).items()}
    tables = at.dataframe[1:]  # after the summary table: one per SAE, in the chosen order
    assert len(tables) == 3
    for table, short in zip(tables, ["L0R", "L1M", "L1A"]):
        features = strongest_features(acts[short], 5)
        assert [int(link.rsplit("=", 1)[1]) for link in table.value["feature"]] == features
        assert np.allclose(table.value["peak"], acts[short][:, features].max(dim=0).values.numpy(), atol=1e-3)
    chart = at.get("plotly_chart")[-1]
    values = np.stack([acts[s].max(dim=1).values.numpy() for s in ["L0R", "L1M", "L1A"]], axis=1)
    assert np.allclose(heatmap_values(chart), values / values.max(axis=0), atol=1e-5)
    strongest = [[f"#{int(acts[s][i].argmax())}" if values[i, j] > 0 else "" for j, s in enumerate(["L0R", "L1M", "L1A"])]
                 for i in range(len(values))]
    assert json.loads(chart.proto.spec)["data"][0]["text"] == strongest


def test_a_prompt_across_layers_explains_bad_input(monkeypatch, precomputed_run):
    at = app_page(monkeypatch, "4_Layers.py", precomputed_run).run()
    at.text_area[0].set_value("   ")
    at.button[0].click().run()
    assert not at.exception and "the prompt is empty" in at.error[0].value
    at.multiselect[0].set_value([])
    at.button[0].click().run()
    assert not at.exception and "Pick at least one SAE" in at.warning[-1].value

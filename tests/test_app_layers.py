"""The Layers page (Streamlit AppTest) and its charts."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
from helpers import SITES, app_page, heatmap_values, trace_values

from explorer.layers_view import by_layer_frame, metric_by_layer, sparsity_fidelity
from explorer.runs_view import metrics_frame
from sae_core.features.reader import FeatureStore
from sae_core.interventions.prompt_activations import prompt_activations, strongest_features, tokenize_prompt
from sae_core.runs.open_run import open_run_saes

TEXT = "the river city music science history ocean language learning light"


def test_charts_have_one_line_per_site(precomputed_run):
    with FeatureStore(precomputed_run) as store:
        frame = by_layer_frame(metrics_frame(precomputed_run), store.layer_summary())
    fig = metric_by_layer(frame, "l0")
    assert {trace.name for trace in fig.data} == {"residual stream", "MLP output", "attention output", "MLP transcoder"}
    assert metric_by_layer(frame, "fvu") is None and sparsity_fidelity(frame) is None  # imported: no metrics
    frame["fvu"] = [0.1, 0.2, 0.3, 0.4]
    scatter = sparsity_fidelity(frame)
    assert sorted(x for trace in scatter.data for x in trace.y) == [0.1, 0.2, 0.3, 0.4]


def _suite_sample(precomputed_run, tmp_path):
    """The precomputed run plus evaluated SAEs that are not in its feature file (a suite's unsampled layers)."""
    run = tmp_path / "suite"
    shutil.copytree(precomputed_run, run)
    for folder, site in [(run / "saes" / f"blocks.{i}.hook_{k}", f"L{i}{k[0].upper()}")
                         for i in (0, 1, 2) for k in ("resid_post", "mlp_out", "attn_out")]:
        folder.mkdir(exist_ok=True)
        if not (folder / "cfg.json").is_file():
            (folder / "cfg.json").write_text("{}")
        flagged = site == "L2M"
        (folder / "metrics.json").write_text(json.dumps({
            "hook_name": folder.name, "site": site, "d_sae": 48, "fvu": 0.2, "explained_variance": 0.8, "l0": 8.0,
            "dead_fraction": 0.1, "dead_fraction_note": "counted over only 90 tokens …" if site.endswith("A") else None,
            "ce_loss_recovered": None if flagged else 0.9, "ce_loss_recovered_note": "n/a: zero ablation …" if flagged else None,
            "kl_div": 0.01, "delta_lm_loss": 0.02, "eval_tokens": 90,
        }))
    return run


def test_layers_page_charts_every_evaluated_sae_and_flags(monkeypatch, precomputed_run, tmp_path):
    run = _suite_sample(precomputed_run, tmp_path)
    at = app_page(monkeypatch, "4_Layers.py", run).run()
    assert not at.exception and not at.warning
    assert "9 SAEs evaluated" in at.caption[0].value and f"{len(SITES)} of them in the feature file" in at.caption[0].value
    charts = {spec["layout"]["title"]["text"]: spec for spec in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))}
    ce = next(spec for title, spec in charts.items() if title.startswith("CE-loss recovered"))
    assert "1 n/a" in ce["layout"]["title"]["text"] and sum(len(trace_values(t["x"])) for t in ce["data"]) == 8
    dead = next(spec for title, spec in charts.items() if title.startswith("dead fraction"))
    rings = [t for t in dead["data"] if t["name"] == "warning (hover)"]
    assert len(rings) == 1 and trace_values(rings[0]["x"]) == [0, 1, 2]  # the attention SAEs: too few tokens
    assert len(at.dataframe[0].value) == 9
    assert "L2M CE rec.: n/a" in at.expander[0].markdown[0].value


def test_layers_page_renders_and_asks_for_metrics(monkeypatch, precomputed_run):
    at = app_page(monkeypatch, "4_Layers.py", precomputed_run).run()
    assert not at.exception
    assert "sae-explorer eval" in at.warning[0].value
    assert len(at.dataframe[0].value) == len(SITES)


def test_layers_page_without_a_feature_file(monkeypatch, tmp_path):
    (tmp_path / "run.json").write_text("{}")
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
        assert [int(re.search(r"feature=(\d+)", link)[1]) for link in table.value["feature"]] == features
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

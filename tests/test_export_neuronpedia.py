"""`sae-explorer export --format neuronpedia`: the folder Neuronpedia's importer reads, every row of the fields of
its `db_models` (neuronpedia-utils), values equal to the feature file's."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb

from sae_core.cli import main

# The fields of Neuronpedia's import models (neuronpedia-utils/neuronpedia_utils/db_models): a row with any other key
# would not construct; the required ones must be there.
FEATURE = {"modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector", "vectorLabel",
           "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
           "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
           "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
           "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
           "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist"}
ACTIVATION = {"id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue", "values", "creatorId",
              "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "createdAt", "lossValues",
              "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex"}
EXPLANATION = {"id", "modelId", "layer", "index", "description", "authorId", "embedding", "triggeredById", "typeName",
               "explanationModelName", "notes", "createdAt"}
SOURCE = {"id", "modelId", "setName", "creatorId", "hasDashboards", "inferenceEnabled", "inferenceHosts", "saelensConfig",
          "saelensRelease", "saelensSaeId", "hfRepoId", "hfFolderId", "visibility", "defaultOfModelId", "hasUmap",
          "hasUmapLogSparsity", "hasUmapClusters", "num_prompts", "num_tokens_in_prompt", "dataset", "notes", "createdAt"}
REQUIRED = {"features": {"modelId", "layer", "index"}, "explanations": {"id", "modelId", "layer", "index", "description", "authorId"},
            "activations": {"id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
                            "values", "creatorId"}}


def _rows(folder: Path, kind: str) -> list[dict]:
    return [json.loads(line) for path in sorted((folder / kind).glob("batch-*.jsonl.gz"))
            for line in gzip.open(path, "rt", encoding="utf-8")]


def test_neuronpedia_export_matches_the_feature_file(explained_run, tmp_path, capsys):
    out = tmp_path / "np"
    assert main(["export", str(explained_run), str(out), "--format", "neuronpedia", "--model-id", "tiny-qwen3",
                 "--release-id", "tiny", "--batch-features", "10"]) == 0
    assert "Neuronpedia export of" in capsys.readouterr().out
    con = duckdb.connect(str(explained_run / "features.duckdb"), read_only=True)
    saes = con.execute("SELECT sae_id, layer, site, d_sae FROM saes ORDER BY sae_id").fetchall()
    vocab = [t for (t,) in con.execute("SELECT token FROM vocab ORDER BY token_id").fetchall()]
    sources = sorted(p.name for p in (out / "tiny-qwen3").iterdir())
    assert len(sources) == len(saes) and json.loads((out / "export.json").read_text())["format"] == "neuronpedia"
    total_explanations = 0
    for sae_id, layer, site, d_sae in saes:
        kind = {"resid_post": "res", "mlp_out": "mlp", "attn_out": "att", "transcoder": "transcoder"}[site]
        folder = out / "tiny-qwen3" / f"{layer}-tiny-{kind}-{d_sae}"
        source = json.loads((folder / "source.jsonl").read_text())
        assert set(source) <= SOURCE and source["id"] == folder.name and source["setName"] == f"tiny-{kind}-{d_sae}"
        for name in ("release", "model", "sourceset"):
            assert json.loads((folder / f"{name}.jsonl").read_text())
        features = _rows(folder, "features")
        assert [int(f["index"]) for f in features] == list(range(d_sae))
        for f in features:
            assert REQUIRED["features"] <= set(f) <= FEATURE and f["layer"] == folder.name
        density, max_act, top_ids, top_values = con.execute(
            "SELECT density, max_act, top_logit_ids, top_logit_values FROM features WHERE sae_id = ? AND feature = 3",
            [sae_id]).fetchone()
        assert features[3]["frac_nonzero"] == density and features[3]["maxActApprox"] == max_act
        assert features[3]["pos_str"] == [vocab[i] for i in top_ids] and features[3]["pos_values"] == list(top_values)
        activations = _rows(folder, "activations")
        n_examples = con.execute("SELECT count(*) FROM examples WHERE sae_id = ?", [sae_id]).fetchone()[0]
        assert len(activations) == n_examples
        expected = con.execute("""SELECT e.activation, e.position - e.window_start FROM examples e
                                  WHERE sae_id = ? ORDER BY feature, kind, rank""", [sae_id]).fetchall()
        for row, (activation, at) in zip(activations, expected, strict=True):
            assert REQUIRED["activations"] <= set(row) <= ACTIVATION
            assert len(row["tokens"]) == len(row["values"]) and row["maxValue"] == max(row["values"])
            assert row["values"][at] == activation and row["qualifyingTokenIndex"] == at
        explanations = _rows(folder, "explanations")
        for row in explanations:
            assert REQUIRED["explanations"] <= set(row) <= EXPLANATION
        total_explanations += len(explanations)
    assert total_explanations == con.execute("SELECT count(*) FROM explanations WHERE current").fetchone()[0] == 5


def test_an_export_replaces_only_an_earlier_export(explained_run, tmp_path):
    out = tmp_path / "np"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", str(explained_run), str(out), "--format", "neuronpedia"]) == 2
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    out.rmdir()
    assert main(["export", str(explained_run), str(out), "--format", "neuronpedia"]) == 0
    assert main(["export", str(explained_run), str(out), "--format", "neuronpedia"]) == 0  # an earlier export: replaced
    assert main(["export", str(explained_run), str(tmp_path / "np2"), "--format", "neuronpedia", "--release-id", "my_saes"]) == 2
    assert json.loads((out / "export.json").read_text())["release"] == "run"  # the run folder's name

"""The sae-explorer command: help, the train → eval path, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from sae_core.cli import main


def _train_args(model_dir, corpus, out, *extra):
    return [
        "train", "--model", str(model_dir), "--corpus", str(corpus), "--sites", "L1R,L1M",
        "--k", "4", "--expansion", "2", "--tokens", "2k", "--batch-size", "256", "--context-size", "32",
        "--lm-batch-size", "4", "--chunk-tokens", "1k", "--eval-tokens", "1k", "--ce-tokens", "256",
        "--threads", "1", "--out", str(out), *extra,
    ]


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["precompute"], ["import"], ["app"], ["sites"], ["info"], ["report"],
                                     ["index"]])
def test_help_explains_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: sae-explorer" in text
    if command == ["train"]:
        for flag in ("--model", "--sites", "--arch", "--k", "--expansion", "--tokens", "--corpus", "--out", "--config"):
            assert flag in text


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cli"
    assert main(_train_args(tiny_model_dir, tiny_corpus, out)) == 0
    return out


def test_train_evaluates_and_prints_a_metrics_table(trained_run, capsys):
    metrics = json.loads((trained_run / "saes" / "blocks.1.hook_resid_post" / "metrics.json").read_text())
    for key in ("fvu", "explained_variance", "mse", "l0", "dead_fraction", "dense_fraction",
                "ce_loss_clean", "ce_loss_sae", "ce_loss_zero_ablation", "ce_loss_recovered", "kl_div", "delta_lm_loss"):
        assert key in metrics, key
    assert metrics["eval_split"] == "eval" and metrics["training_tokens"] == 2048
    assert main(["eval", str(trained_run), "--tokens", "512", "--ce-tokens", "0"]) == 0
    out = capsys.readouterr().out
    assert "L1R" in out and "L1M" in out and "FVU" in out
    assert main(["info", str(trained_run)]) == 0
    assert "features: none yet; run `sae-explorer precompute" in capsys.readouterr().out


def test_sites_lists_the_model_sites(tiny_model_dir, capsys):
    assert main(["sites", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "L0R" in out and "L1A" in out and "blocks.1.hook_mlp_out" in out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    return err[-1]


def test_unknown_model_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "nope does not exist" in _error(capsys)
    assert main(["train", "--model", "no-such-org/no-such-model", "--out", str(tmp_path / "r")]) == 2
    assert _error(capsys).startswith("error: could not load model 'no-such-org/no-such-model'")
    assert not (tmp_path / "r").exists()


def test_misspelled_site_suggests_valid_ones(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    args = _train_args(tiny_model_dir, tiny_corpus, tmp_path / "r")
    args[args.index("L1R,L1M")] = "L1Q"
    assert main(args) == 2
    assert "L1" in _error(capsys)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "no documents"), (b"caf\xe9 au lait\n", "UTF-8")],
)
def test_bad_corpus_is_one_line_error(content, message, tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(content)
    assert main(_train_args(tiny_model_dir, corpus, tmp_path / "r")) == 2
    assert message in _error(capsys)


def test_context_longer_than_model_is_refused(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    args = _train_args(tiny_model_dir, tiny_corpus, tmp_path / "r")
    args[args.index("--context-size") + 1] = "100000"
    assert main(args) == 2
    assert "context size" in _error(capsys)


def test_folder_with_a_different_run_needs_overwrite(trained_run, tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    args = _train_args(tiny_model_dir, tiny_corpus, out)
    args[args.index("L1R,L1M")] = "L0R"
    assert main(args) == 2
    assert "--overwrite" in _error(capsys)


def test_eval_reports_corrupt_or_mismatched_sae_files(trained_run, tmp_path, capsys):
    run = tmp_path / "broken"
    shutil.copytree(trained_run, run)
    weights = run / "saes" / "blocks.1.hook_mlp_out" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["eval", str(run)]) == 2
    assert "sae_weights.safetensors" in _error(capsys)

    shutil.rmtree(run)
    shutil.copytree(trained_run, run)
    cfg_path = run / "saes" / "blocks.1.hook_mlp_out" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["d_sae"]
    cfg_path.write_text(json.dumps(cfg))
    assert main(["eval", str(run)]) == 2
    assert "d_sae" in _error(capsys)


def test_eval_of_a_missing_run_is_one_line_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none")]) == 2
    assert "does not exist" in _error(capsys)


def test_precompute_of_a_trained_run_writes_the_feature_file(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["precompute", str(run), "--tokens", "1k", "--top", "3", "--window", "2", "--device", "cpu"]) == 0
    from sae_core.features.reader import FeatureStore

    with FeatureStore(run) as store:
        assert list(store.saes().short_name) == ["L1M", "L1R"]
        assert store.meta["tokens"] >= 1000 and store.meta["split"] == "eval"
        assert store.saes().fvu.notna().all()  # the run's metrics travel with the SAEs
        assert store.search_index_problem is None  # precompute built the search index
        found = store.search_label("")
    assert "wrote" in capsys.readouterr().err
    assert main(["info", str(run)]) == 0
    assert "features: " in capsys.readouterr().out
    (run / "features.search.sqlite").unlink()
    with FeatureStore(run) as store:
        assert "sae-explorer index" in store.search_index_problem
    assert main(["index", str(run)]) == 0
    assert re.search(r"features\.search\.sqlite: [\d,]+ features, [\d,]+ explanations, [\d,]+ tokens", capsys.readouterr().out)
    with FeatureStore(run) as store:
        assert store.search_index_problem is None and store.search_label("").equals(found)


def test_precompute_bad_options_and_missing_run_are_one_line_errors(tmp_path, capsys):
    assert main(["precompute", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["precompute", str(tmp_path), "--top", "0"]) == 2
    assert "n_top must be at least 1" in capsys.readouterr().err


def test_import_then_precompute_from_the_command_line(published_saes, tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "imported"
    args = ["import", *map(str, published_saes), "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus),
            "--out", str(out), "--tokens", "500", "--device", "cpu"]
    assert main(args) == 0
    assert (out / "features.duckdb").is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "imported"
    assert main(args) == 2
    assert "is not empty; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--no-precompute"]) == 0
    assert not (out / "features.duckdb").exists()


def test_import_of_a_mismatched_sae_is_one_line_error(tiny_model_dir, tmp_path, capsys):
    from helpers import random_sae

    from sae_core.loading import save_sae

    save_sae(random_sae("L0R", "topk", d_in=16), tmp_path / "narrow")
    assert main(["import", str(tmp_path / "narrow"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "d_in 16 does not match the model's width 64" in errors[0]
    assert not (tmp_path / "run").exists()


def test_app_of_a_missing_run_is_one_line_error(tmp_path, capsys):
    assert main(["app", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err

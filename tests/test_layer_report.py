"""The per-layer report: a run's metrics.json files → one table row per SAE, a PNG of the paper's panels, notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae_core.cli import main
from sae_core.errors import UserError
from sae_core.evaluation.layer_report import metrics_frame, write_report

NA_NOTE = "n/a: zero ablation changes the loss by only 0.004 nats (under 0.05 nats), so the ratio is noise"
DEAD_NOTE = "counted over only 512 tokens, in which a latent of average density fires 7.1 times (under 30): …"


def fake_suite(root: Path, n_layers: int = 3) -> Path:
    """A run folder holding only run.json and the metrics.json of R/M/A SAEs at every layer (no weights needed)."""
    run = root / "suite"
    (run).mkdir()
    (run / "run.json").write_text(json.dumps({"status": "complete", "model": "tiny", "sites": []}))
    for layer in range(n_layers):
        for kind, short in (("resid_post", "R"), ("mlp_out", "M"), ("attn_out", "A")):
            hook = f"blocks.{layer}.hook_{kind}"
            folder = run / "saes" / hook
            folder.mkdir(parents=True)
            (folder / "cfg.json").write_text("{}")
            na = (layer, short) == (1, "M")
            metrics = {
                "hook_name": hook, "site": f"L{layer}{short}", "architecture": "topk", "d_sae": 256, "k": 8,
                "fvu": 0.1 * (layer + 1), "explained_variance": 1 - 0.1 * (layer + 1), "l0": 8.0,
                "dead_fraction": 0.02 * layer, "dead_fraction_note": DEAD_NOTE if short == "A" else None,
                "ce_loss_recovered": None if na else 0.9, "ce_loss_recovered_raw": 22.8 if na else 0.9,
                "ce_loss_recovered_note": NA_NOTE if na else None,
                "kl_div": 0.01, "delta_lm_loss": 0.02, "eval_tokens": 512,
                "eval_note": "evaluated on 512 of the 4,000 reconstruction tokens asked for: …",
            }
            (folder / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_metrics_frame_orders_by_layer_and_names_sites(tmp_path):
    frame = metrics_frame(fake_suite(tmp_path))
    assert len(frame) == 9 and frame["layer"].is_monotonic_increasing
    assert set(frame["site name"]) == {"residual stream", "MLP output", "attention output"}
    assert frame.loc[frame["site"] == "L1M", "ce_loss_recovered"].isna().all()


def test_report_writes_the_figure_and_a_table_that_flags(tmp_path, capsys):
    run = fake_suite(tmp_path)
    png, table = write_report(run)
    assert png == run / "report" / "by_layer.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = table.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| L1M "))
    assert "| n/a |" in row and "22.8" not in row  # the noisy ratio is not shown as a number
    assert f"L1M CE rec.: {NA_NOTE}" in text
    assert "| 4.0%* |" in next(line for line in text.splitlines() if line.startswith("| L2A "))
    assert text.count("evaluated on 512 of the 4,000") == 1  # the shortfall, said once for the run
    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "by_layer.png").is_file()


def test_report_of_an_unevaluated_run_says_what_to_do(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(UserError, match="sae-explorer eval"):
        write_report(run)

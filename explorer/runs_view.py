"""A served run as the Runs page shows it: its run.json facts and its SAEs' metrics as a table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sae_core.evaluation.layer_report import metrics_frame as layer_metrics_frame
from sae_core.runs.run_folder import RunDir

METRIC_COLUMNS = [
    "site", "hook_name", "layer", "kind", "site name", "architecture", "d_sae", "k", "l0", "fvu", "explained_variance",
    "dead_fraction", "dense_fraction", "ce_loss_recovered", "kl_div", "delta_lm_loss", "delta_lm_loss_se",
    "training_tokens", "eval_tokens", "ce_tokens", "ce_loss_recovered_note", "dead_fraction_note", "eval_note",
]


def metrics_frame(run: str | Path) -> pd.DataFrame:
    """One row per evaluated SAE of `run`, in layer/site order, with the metric and note columns that exist."""
    frame = layer_metrics_frame(run)
    if frame.empty:
        return frame
    return frame[[c for c in METRIC_COLUMNS if c in frame.columns]]


def run_summary(run: str | Path) -> dict:
    """The run.json facts the app shows above the table."""
    info = RunDir(run).require()
    config = info.get("config", {})
    return {
        "status": info.get("status"),
        "model": info.get("model"),
        "corpus": info.get("corpus"),
        "sites": len(info.get("sites", [])),
        "architecture": config.get("arch"),
        "tokens per SAE": config.get("tokens"),
        "created": info.get("created"),
    }

"""A run's metrics across layers and sites, as the paper shows them: one table row per SAE and, for each
metric, one line per site against layer (a PNG for docs and reports; the app draws the same with plotly).

Flags travel with the numbers (see `evals.py`): CE-loss recovered that is noise is None here ("n/a" in
tables, left out of the chart, with its raw value and reason in the table's notes); a dead fraction counted
over too short a window is drawn hollow and noted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..io import atomic_path
from ..model.sites import parse_site
from ..options import option
from ..runs.run_folder import RunDir
from .evaluate_run import read_metrics
from .metrics_table import NOTES, metrics_markdown

SITE_NAMES = {"resid_post": "residual stream", "mlp_out": "MLP output", "attn_out": "attention output",
              "transcoder": "MLP transcoder"}
BY_LAYER = {
    "explained_variance": "explained variance (higher is better)",
    "l0": "L0 (active latents per token)",
    "dead_fraction": "dead fraction (never fired on the eval tokens)",
    "ce_loss_recovered": "CE-loss recovered (higher is better)",
    "kl_div": "KL(clean ‖ SAE spliced), nats per token",
    "delta_lm_loss": "Δ LM loss with the SAE spliced in (nats)",
}
"""The paper's per-layer panels: metric → title. FVU = 1 − explained variance."""


@dataclass(frozen=True)
class ReportOptions:
    """The options of `sae-explorer report`."""

    out: str | None = option(None, "folder for by_layer.png and metrics.md (default: RUN/report)")


def metrics_frame(run: str | Path) -> pd.DataFrame:
    """One row per evaluated SAE of `run` (its metrics.json) with `layer`, `kind` and `site name`, in layer order."""
    rows = [_with_site(m) for m in read_metrics(str(run)).values()]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["layer", "kind"], kind="stable").reset_index(drop=True)


def _with_site(metrics: dict[str, Any]) -> dict[str, Any]:
    site = parse_site(metrics["hook_name"])
    return {**metrics, "layer": site.layer, "kind": site.kind, "site name": SITE_NAMES.get(site.kind, site.kind)}


def layer_figure(frame: pd.DataFrame, title: str, path: str | Path) -> Path:
    """The six per-layer panels of `BY_LAYER`, one line per site, written as a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for ax, (metric, label) in zip(axes.flat, BY_LAYER.items()):
        for kind, name in SITE_NAMES.items():
            rows = frame[frame["kind"] == kind] if metric in frame else frame.iloc[:0]
            rows = rows[rows[metric].notna()]
            if rows.empty:
                continue
            line = ax.plot(rows["layer"], rows[metric], marker="o", markersize=4, label=name)[0]
            flagged = rows[rows[NOTES[metric]].notna()] if NOTES.get(metric) in rows else rows.iloc[:0]
            if not flagged.empty:  # a dead fraction over too short a window: hollow markers
                ax.plot(flagged["layer"], flagged[metric], "o", markersize=8, markerfacecolor="white",
                        markeredgecolor=line.get_color())
        n_na = int(frame[metric].isna().sum()) if metric in frame else len(frame)
        ax.set_title(label + (f"\n({n_na} SAE(s) n/a, see the notes)" if n_na and metric in NOTES else ""), fontsize=10)
        ax.set_xlabel("layer")
        ax.ticklabel_format(axis="y", useOffset=False)  # TopK's L0 sits at k: no "+3.199e1" offset axis
        if metric in ("l0", "dead_fraction"):
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=9)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def write_report(run: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """`by_layer.png` and `metrics.md` (the full table, its notes) of an evaluated run, in `out` (default RUN/report)."""
    run_dir = RunDir(run)
    info = run_dir.require()
    frame = metrics_frame(run)
    if frame.empty:
        raise UserError(f"{run} has no metrics.json yet: run `sae-explorer eval {run}` first")
    out = Path(out) if out else run_dir.path / "report"
    title = f"{info.get('model', '?')}: {len(frame)} SAEs of run {run_dir.path.name}"
    png = layer_figure(frame, title, out / "by_layer.png")
    metrics = read_metrics(str(run))
    ordered = {hook: metrics[hook] for hook in frame["hook_name"]}  # the files' own values (no NaN for None)
    table = out / "metrics.md"
    with atomic_path(table) as tmp:
        tmp.write_text(f"# {title}\n\n![metrics by layer](by_layer.png)\n\n{metrics_markdown(ordered)}\n", encoding="utf-8")
    return png, table

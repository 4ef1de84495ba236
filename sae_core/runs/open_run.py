"""Open a run folder together with its model and SAEs, each SAE checked against the model and placed at its site."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device
from ..errors import RunError
from ..loading import check_sae_fits, load_sae
from ..model.batch_size import dtype_named
from ..model.load import LoadedModel, load_model
from ..model.sites import Site, parse_site
from ..saes import SAE
from .run_folder import RunDir


@dataclass(frozen=True)
class RunSAEs:
    """A run's folder, run.json, model and SAEs (in forward-pass order of their sites)."""

    run: RunDir
    info: dict[str, Any]
    loaded: LoadedModel
    saes: dict[Site, SAE]
    folders: dict[Site, Path]

    @property
    def config(self) -> dict[str, Any]:
        """The run's config from run.json (empty for runs that have none)."""
        return self.info.get("config", {})


def open_run_saes(
    run_path: str | Path,
    *,
    loaded: LoadedModel | None = None,
    device: str | torch.device = "auto",
    log: Callable[[str], None] | None = None,
    hook_names: list[str] | None = None,
) -> RunSAEs:
    """Load the SAEs of a run (only those at `hook_names` when given), and its model unless `loaded` is given
    (in the run's --lm-dtype); a clear error for a run without SAEs."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run = RunDir(run_path)
    info = run.require()
    folders = [f for f in run.sae_dirs() if hook_names is None or f.name in hook_names]
    if not folders:
        raise RunError(f"run {run.path} has no SAEs yet (status: {info.get('status', 'unknown')}); finish training first")
    if loaded is None:
        log(f"loading model {info.get('model')} …")
        cfg = info.get("config", {})
        dtype = dtype_named(cfg.get("lm_dtype") or "float32", "lm_dtype in run.json")
        loaded = load_model(cfg.get("model"), device=resolve_device(device), dtype=dtype)
    model_device = loaded.device
    saes: dict[Site, SAE] = {}
    where: dict[Site, Path] = {}
    for folder in folders:
        sae = load_sae(folder, device=model_device)
        check_sae_fits(sae, loaded.layout.d_model)
        site = parse_site(sae.cfg.hook_name, loaded.layout.n_layers)
        saes[site], where[site] = sae, folder
    order = sorted(saes, key=lambda s: s.order_key)
    return RunSAEs(run, info, loaded, {s: saes[s] for s in order}, {s: where[s] for s in order})

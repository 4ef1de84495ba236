"""Bring your own SAEs: turn SAELens / sparsify folders into a run folder, checked against their model.

The SAEs are re-saved in this project's canonical SAELens form under `RUN/saes/<hook>/`, and a
run.json records where they came from, so `precompute`, `eval` and the app treat the run like a
trained one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import RunError, SAEFileError
from ..loading import check_sae_fits, load_sae, save_sae
from ..model.load import LoadedModel
from ..model.sites import parse_site
from ..options import model_option, option
from ..text.corpus import describe_source
from .run_folder import RunDir


@dataclass(frozen=True)
class ImportOptions:
    """The options of `sae-explorer import` besides precompute's (it precomputes what it imports)."""

    out: str = option(None, "run folder to create, e.g. runs/imported", required=True)
    model: str | None = model_option()
    overwrite: bool = option(False, "replace what --out holds", switch=True)
    eval: bool = option(False, "also evaluate the SAEs on held-out text (metrics.json)")
    precompute: bool = option(True, "precompute the feature file after importing")


def import_saes(
    folders: Sequence[str | Path],
    out: str | Path,
    loaded: LoadedModel,
    *,
    model: str | None,
    corpus: str | None = None,
    context_size: int = 128,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> RunDir:
    """Check each SAE folder against `loaded` (d_in, site in range, one SAE per site) and write run `out`."""
    if not folders:
        raise SAEFileError("no SAE folders given; pass one or more SAELens or sparsify folders")
    saes = {}
    for folder in folders:
        sae = load_sae(folder)
        if not sae.cfg.hook_name:
            raise SAEFileError(
                f"{folder}: cannot tell which site this SAE reads (no hook name in cfg.json and the folder name is not a "
                "site); rename the folder to its hook, e.g. blocks.6.hook_resid_post or layers.6"
            )
        site = parse_site(sae.cfg.hook_name, loaded.layout.n_layers)
        check_sae_fits(sae, loaded.layout.d_model)
        if site in saes:
            raise SAEFileError(f"{folder} and {saes[site][0]} are both SAEs of {site.hook_name}; import one SAE per site")
        saes[site] = (Path(folder), sae)

    run = RunDir(out)
    if run.path.exists() and any(run.path.iterdir()):
        if not overwrite:
            raise RunError(f"{run.path} is not empty; choose another --out or pass --overwrite to replace it")
        run.clear()
    sites = sorted(saes, key=lambda s: s.order_key)
    for site in sites:
        folder, sae = saes[site]
        sae.cfg = sae.cfg.replace(hook_name=site.hook_name)  # canonical name (sparsify and older SAELens use others)
        save_sae(sae, run.sae_dir(site.hook_name), extra_metadata={"imported_from": str(Path(folder).resolve())})
        log(f"imported {folder} as {site.short} ({sae.cfg.architecture}, d_sae {sae.cfg.d_sae:,})")
    info: dict[str, Any] = {
        "name": run.path.name,
        "status": "imported",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sae_explorer_version": __version__,
        "model": loaded.name,
        "n_layers": loaded.layout.n_layers,
        "d_model": loaded.layout.d_model,
        "sites": [s.hook_name for s in sites],
        "corpus": describe_source(corpus),
        "config": {"model": model, "corpus": corpus, "context_size": context_size},
        "imported_from": {s.hook_name: str(saes[s][0].resolve()) for s in sites},
    }
    run.write(info)
    return run

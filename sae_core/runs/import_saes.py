"""Bring published SAEs: turn SAEs of any format `load_sae` reads (local, `hf:` or `saelens:`) into a run folder,
checked against their model.

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
from ..activations.harvest import harvest_chunks
from ..activations.outliers import METADATA_KEY as OUTLIER_KEY
from ..activations.outliers import outlier_threshold, threshold_from_norms
from ..errors import RunError, SAEFileError, SiteError
from ..hub import is_hub
from ..loading import FORMATS, check_sae_fits, load_sae, save_sae
from ..loading.saelens_registry import is_registry_name
from ..model.load import LoadedModel
from ..model.sites import Site, parse_site
from ..options import model_option, option
from ..saes import SAE
from ..text.corpus import describe_source, iter_documents
from ..text.tokens import token_batches
from .run_folder import RunDir


@dataclass(frozen=True)
class ImportOptions:
    """The options of `sae-explorer import` besides precompute's (it precomputes what it imports)."""

    out: str = option(None, "run folder to create, e.g. runs/imported", required=True)
    model: str | None = model_option()
    overwrite: bool = option(False, "replace what --out holds", switch=True)
    eval: bool = option(False, "also evaluate the SAEs on held-out text (metrics.json)")
    outlier_factor: float = option(
        0.0, "for SAEs trained without outlier tokens (e.g. 10 for the Qwen3 SAEs of dictionary_learning): leave out "
        "tokens whose activation norm exceeds this × the median norm at the site, measured on the corpus at import "
        "and recorded with each SAE; 0 counts every token. SAEs that carry their own threshold keep it")
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
    outlier_factor: float = 0.0,
    log: Callable[[str], None] = print,
) -> RunDir:
    """Check each SAE (a folder or file of any format `load_sae` reads, optionally `PATH=SITE` to name its site) against
    `loaded` (d_in, site in range, one SAE per site) and write run `out`."""
    if not folders:
        raise SAEFileError("no SAEs given; pass one or more SAE folders or files (" + "; ".join(FORMATS) + ")")
    saes = {}
    for given in folders:
        folder, site_name = split_site(given)
        sae = load_sae(folder)
        if site_name is None and not sae.cfg.hook_name:
            raise SAEFileError(
                f"{folder}: cannot tell which site this SAE reads (its files do not name one); say it after the path, "
                f"e.g. {folder}=L6R (or blocks.6.hook_resid_post)"
            )
        site = parse_site(site_name or sae.cfg.hook_name, loaded.layout.n_layers)
        check_sae_fits(sae, loaded.layout.d_model)
        if site.is_transcoder != sae.cfg.transcoder:
            raise SAEFileError(
                f"{folder} is {'a transcoder' if sae.cfg.transcoder else 'an SAE'} but {site.short} is "
                f"{'a transcoder site' if site.is_transcoder else 'an SAE site'}: place a transcoder at L{{i}}T (MLP input to "
                "MLP output) and an SAE at L{i}R, L{i}M or L{i}A"
            )
        _check_output_site(folder, sae, site)
        if site in saes:
            raise SAEFileError(f"{folder} and {saes[site][0]} are both SAEs of {site.hook_name}; import one SAE per site")
        saes[site] = (Path(folder), sae)

    if outlier_factor > 0:
        _record_outlier_thresholds({site: sae for site, (_, sae) in saes.items()}, loaded, corpus, context_size,
                                   outlier_factor, log)
    run = RunDir(out)
    if run.path.exists() and any(run.path.iterdir()):
        if not overwrite:
            raise RunError(f"{run.path} is not empty; choose another --out or pass --overwrite to replace it")
        run.clear()
    sites = sorted(saes, key=lambda s: s.order_key)
    for site in sites:
        folder, sae = saes[site]
        # canonical names (sparsify and older SAELens use others)
        sae.cfg = sae.cfg.replace(hook_name=site.hook_name, hook_name_out=site.hook_name_out)
        save_sae(sae, run.sae_dir(site.hook_name), extra_metadata={"imported_from": _source(folder)})
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
        "imported_from": {s.hook_name: _source(saes[s][0]) for s in sites},
    }
    run.write(info)
    return run


SAMPLE_TOKENS = 16_384
"""Real tokens of the corpus's training split whose norms set an imported SAE's outlier threshold."""


def _record_outlier_thresholds(saes: dict[Site, SAE], loaded: LoadedModel, corpus: str | None, context_size: int,
                               factor: float, log: Callable[[str], None]) -> None:
    """Set `factor` × the median activation norm at each site (on a sample of the corpus) as the outlier threshold
    of the SAEs that carry none, so that evaluation and statistics leave out what their training left out."""
    todo = {site: sae for site, sae in saes.items() if outlier_threshold(sae) is None}
    if not todo:
        return
    batches = token_batches(iter_documents(corpus, "train"), loaded.tokenizer, context_size, 8)
    sample = next(harvest_chunks(loaded, list(todo), batches, SAMPLE_TOKENS), None)
    if sample is None:
        raise SAEFileError(f"the corpus {describe_source(corpus)} gave no tokens to measure activation norms on")
    for site, sae in todo.items():
        norms = sample.acts[site].norm(dim=-1)
        threshold = threshold_from_norms(norms, factor)
        sae.cfg.metadata.update({OUTLIER_KEY: threshold, "outlier_factor": factor, "median_norm": float(norms.median()),
                                 "outlier_threshold_from": f"{sample.tokens:,} tokens of {describe_source(corpus)} at import"})
        log(f"{site.short}: outlier threshold {threshold:.4g} ({factor:g} × median norm {float(norms.median()):.4g})")


def _check_output_site(folder: str | Path, sae: SAE, site: Site) -> None:
    """SAEFileError when a transcoder's file names an output other than its site's (the import renames both hooks to
    the site's, so a cross-layer or residual-stream output would otherwise be spliced in the wrong place unnoticed).
    An output name that no site spells cannot be checked and is replaced by the site's."""
    if not sae.cfg.transcoder:
        return
    try:
        writes = parse_site(sae.cfg.hook_name_out)
    except SiteError:
        return
    if writes != site.target:
        raise SAEFileError(f"{folder} writes {sae.cfg.hook_name_out} ({writes.short}), but a transcoder at {site.short} "
                           f"predicts {site.target.short}: only transcoders from an MLP's input to the same layer's MLP "
                           "output are supported")


def _source(path: Path) -> str:
    """Where an SAE came from, as run.json records it: the Hub path as given, or the absolute local path."""
    return str(path) if is_hub(path) or is_registry_name(path) else str(path.resolve())


def split_site(given: str | Path) -> tuple[Path, str | None]:
    """`PATH=SITE` as (path, site); a path that exists as given (even with an `=` in it) names no site."""
    text = str(given)
    if "=" in text and not Path(text).exists():
        path, site = text.rsplit("=", 1)
        if site:
            return Path(path), site
    return Path(text), None

"""SAELens registry names, `saelens:RELEASE/SAE_ID` (the releases of the installed SAELens's `pretrained_saes.yaml`).

The registry says where a release lives on the Hub and which converter reads it. Releases in a format read here
(SAELens folders, Gemma Scope 1 and 2, dictionary_learning, Llama Scope, Qwen Scope) are fetched as `hf:` paths and
read by our own readers, which are tested against each library's encode (SAELens's own sparsify converter, for one,
transposes `W_dec`, and its Llama Scope converter gates without the decoder norms). Every other converter is
SAELens's: the SAE is loaded with `SAE.from_pretrained` and saved as a SAELens folder, which our SAELens reader then
reads (run-time options folded in, unsupported ones refused).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..errors import SAEFileError, first_line
from ..hub import HubPath

PREFIX = "saelens:"
OURS = {None: "SAELens folder", "gemma_2": "Gemma Scope", "gemma_3": "Gemma Scope 2",
        "dictionary_learning_1": "dictionary_learning", "qwen_scope": "Qwen Scope", "sparsify": "sparsify",
        "llama_scope": "Llama Scope"}
"""SAELens conversion functions whose formats our readers read: conversion name -> format."""


def is_registry_name(spec: object) -> bool:
    return str(spec).startswith(PREFIX)


def _directory() -> dict[str, Any]:
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise SAEFileError("saelens: names need SAELens's registry: pip install sae-lens") from None
    return get_pretrained_saes_directory()


def resolve(spec: str) -> tuple[HubPath | None, str, str]:
    """`(hub path for our readers or None for SAELens's converter, release, sae_id)` of `saelens:RELEASE/SAE_ID`."""
    release, _, sae_id = spec[len(PREFIX):].partition("/")
    directory = _directory()
    if release not in directory:
        close = sorted(name for name in directory if release and release.split("-")[0] in name)[:8]
        raise SAEFileError(f"SAELens has no release {release!r}" + (f"; similar: {', '.join(close)}" if close else "")
                           + " (the releases are in sae_lens/pretrained_saes.yaml)")
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        ids = list(lookup.saes_map)
        raise SAEFileError(f"release {release} has no SAE {sae_id!r}; it has {len(ids)}, e.g. {', '.join(ids[:5])}")
    path = lookup.saes_map[sae_id]
    if lookup.conversion_func not in OURS:
        return None, release, sae_id
    if lookup.conversion_func == "gemma_2":
        path = f"{path}/params.npz"
    elif lookup.conversion_func == "gemma_3" and "clt" in path:
        raise SAEFileError(f"{spec} is a cross-layer transcoder, not an SAE of one site; import a resid_post or mlp_out SAE")
    return HubPath(lookup.repo_id, path), release, sae_id


def load_with_saelens(release: str, sae_id: str, folder: Path) -> Path:
    """Load a registry SAE with SAELens's own converter and save it as a SAELens folder under `folder`."""
    try:
        from sae_lens import SAE
    except ImportError:
        raise SAEFileError("this release needs SAELens's own converter: pip install sae-lens") from None
    try:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:  # network, missing files, unsupported architectures: SAELens raises many kinds
        raise SAEFileError(f"SAELens could not load {release}/{sae_id}: {first_line(e, 300)}") from None
    out = folder / "sae"
    sae.save_model(out)
    return out


def fetch_registry_sae(spec: str) -> Path:
    """A local path our readers can read for `saelens:RELEASE/SAE_ID` (fetched through the Hub cache, or converted by
    SAELens into a temporary folder)."""
    from ..hub import fetch

    hub, release, sae_id = resolve(spec)
    if hub is not None:
        return fetch(hub)
    return load_with_saelens(release, sae_id, Path(tempfile.mkdtemp(prefix="saelens-")))

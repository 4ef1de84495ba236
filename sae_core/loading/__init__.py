"""SAE files: write SAELens folders; read SAELens, sparsify, dictionary_learning, Gemma Scope, Llama Scope and Qwen
Scope SAEs; check an SAE fits a model.

Loading never unpickles: JSON, safetensors, `.npz` with `allow_pickle=False` and `.pt` state dicts with
`torch.load(weights_only=True)`. Every problem with a file is an `SAEFileError` whose message names the file,
the format it expected and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import SAEFileError
from ..hub import fetch, is_hub
from ..saes import SAE
from . import dictionary_learning, gemma_scope, llama_scope, qwen_scope, saelens, saelens_registry, sparsify
from .saelens import save_sae

_FOLDERS: tuple[tuple[str, tuple[str, ...], Callable[[Path], SAE]], ...] = (
    ("SAELens", (saelens.CFG_FILE, saelens.WEIGHTS_FILE), saelens.load_saelens),
    ("sparsify", (saelens.CFG_FILE, sparsify.WEIGHTS_FILE), sparsify.load_sparsify),
    ("dictionary_learning", (dictionary_learning.WEIGHTS_FILE,), dictionary_learning.load_dictionary_learning),
    ("Gemma Scope", (gemma_scope.WEIGHTS_FILE,), gemma_scope.load_gemma_scope),
    ("Gemma Scope 2", (gemma_scope.WEIGHTS_FILE_2,), gemma_scope.load_gemma_scope),
    ("Llama Scope", (llama_scope.CFG_FILE,), llama_scope.load_llama_scope),
)
"""Folder formats: name, the files that identify one, reader."""
FORMATS = ("SAELens folder (cfg.json + sae_weights.safetensors)", "sparsify folder (cfg.json + sae.safetensors)",
           "dictionary_learning folder (ae.pt + config.json)", "Gemma Scope params.npz (or its folder)",
           "Gemma Scope 2 params.safetensors + config.json (or their folder)",
           "Llama Scope folder (hyperparams.json + checkpoints/final.safetensors)", "Qwen Scope layerN.sae.pt",
           "any of these on the Hub (hf:ORG/REPO/PATH[@REV])",
           "SAELens registry names (saelens:RELEASE/SAE_ID)")
"""What `load_sae` reads, as its errors list them."""


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> SAE:
    """The inference SAE at `path`, a folder or a file of any format in `FORMATS`, local or on the Hugging Face Hub
    (`hf:ORG/REPO/PATH[@REV]`, fetched into its cache; see `sae_core.hub`), or named in SAELens's registry
    (`saelens:RELEASE/SAE_ID`, see `saelens_registry`).

    Weights come back in float32 on `device`, converted to SAELens's parameterisation so that they encode exactly as
    the library that wrote them (see each reader's module).
    """
    if saelens_registry.is_registry_name(path):
        path = saelens_registry.fetch_registry_sae(str(path))
    path = fetch(str(path)) if is_hub(path) else Path(path)
    if path.is_file():
        if qwen_scope.FILE_PATTERN.fullmatch(path.name):
            return qwen_scope.load_qwen_scope(path).to(device)
        if any(path.name in files for _, files, _ in _FOLDERS):  # a file that marks a folder format: read its folder
            return load_sae(path.parent, device=device)
        if (folder := llama_scope.folder_of_weights(path)) is not None:
            return load_sae(folder, device=device)
        raise SAEFileError(f"{path} is a file of no SAE format read here; pass one of: {'; '.join(FORMATS)}")
    if not path.is_dir():
        raise SAEFileError(f"SAE path {path} does not exist; pass a folder or file of one of: {'; '.join(FORMATS)}")
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise SAEFileError(f"cannot list SAE folder {path}: {e}; check its permissions") from e
    for _, files, load in _FOLDERS:
        if all(f in names for f in files):
            return load(path).to(device)
    nested = sorted(p.name for p in path.iterdir() if p.is_dir() and any((p / f).exists() for _, fs, _ in _FOLDERS for f in fs))
    hint = f"; it has SAE subfolders ({', '.join(nested[:5])}): pass one of them" if nested else ""
    raise SAEFileError(f"{path} holds no SAE: found {', '.join(names[:10]) or 'nothing'}, expected one of: "
                       f"{'; '.join(FORMATS)}{hint}")


def check_sae_fits(sae: SAE, d_model: int) -> None:
    """SAEFileError when the SAE's d_in (or a transcoder's d_out) differs from the model's width at its site."""
    if sae.cfg.out_dim != d_model and sae.cfg.d_in == d_model:
        raise SAEFileError(f"transcoder d_out {sae.cfg.out_dim} does not match the model's width {d_model} at "
                           f"{sae.cfg.hook_name_out or 'its output site'}; load a transcoder trained on this model")
    if sae.cfg.d_in != d_model:
        site = sae.cfg.hook_name or "its site"
        raise SAEFileError(
            f"SAE d_in {sae.cfg.d_in} does not match the model's width {d_model} at {site}; "
            "load an SAE trained on this model"
        )


__all__ = ["FORMATS", "check_sae_fits", "load_sae", "save_sae"]

"""SAE files: write SAELens folders, read SAELens and sparsify folders, check an SAE fits a model.

Loading never unpickles: JSON and safetensors only. Every problem with a folder is an `SAEFileError`
whose message names the file and the fix.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SAEFileError
from ..saes import SAE
from . import saelens, sparsify
from .saelens import save_sae

_FORMATS = (
    ("SAELens", saelens.WEIGHTS_FILE, saelens.load_saelens),
    ("sparsify", sparsify.WEIGHTS_FILE, sparsify.load_sparsify),
)


def load_sae(folder: str | Path, *, device: str | torch.device = "cpu") -> SAE:
    """The inference SAE in `folder` (SAELens: cfg.json + sae_weights.safetensors; sparsify: cfg.json + sae.safetensors).

    Weights come back in float32 on `device`, with SAELens run-time options folded in (see `saelens.py`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise SAEFileError(f"SAE folder {folder} {what}; pass the folder that holds cfg.json and the weights")
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as e:
        raise SAEFileError(f"cannot list SAE folder {folder}: {e}; check its permissions") from e
    for _, weights_file, load in _FORMATS:
        if saelens.CFG_FILE in names and weights_file in names:
            return load(folder).to(device)
    expected = " or ".join(f"{saelens.CFG_FILE} + {w} ({fmt})" for fmt, w, _ in _FORMATS)
    nested = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / saelens.CFG_FILE).exists())
    hint = f"; it has SAE subfolders ({', '.join(nested[:5])}): pass one of them" if nested else ""
    raise SAEFileError(f"{folder} holds no SAE: found {', '.join(names[:10]) or 'nothing'}, expected {expected}{hint}")


def check_sae_fits(sae: SAE, d_model: int) -> None:
    """SAEFileError when the SAE's d_in differs from the model's width at its site."""
    if sae.cfg.d_in != d_model:
        site = sae.cfg.hook_name or "its site"
        raise SAEFileError(
            f"SAE d_in {sae.cfg.d_in} does not match the model's width {d_model} at {site}; "
            "load an SAE trained on this model"
        )


__all__ = ["check_sae_fits", "load_sae", "save_sae"]

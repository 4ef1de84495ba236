"""Gemma Scope SAEs (`params.npz`, google/gemma-scope-*) converted to our JumpReLU SAE.

Each SAE is a folder `layer_L/width_W/average_l0_N/params.npz` of a repository named for its model and site
(`gemma-scope-2b-pt-res`, `-mlp`, `-att`). The file holds `W_enc (d_in, d_sae)`, `b_enc`, `W_dec (d_sae, d_in)`,
`b_dec` and a per-latent `threshold`; it encodes `relu(x @ W_enc + b_enc)` above the threshold — no `b_dec` on the
input, folded into `b_enc` here. Read with `np.load(allow_pickle=False)`. The site comes from the path (the
repository's `-res` / `-mlp` and `layer_L`); attention SAEs read `hook_z` (the heads before the output projection),
which is not a site here, and are refused. Give the site yourself (`PATH=L12R`) when the path does not say it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import SAEFileError
from ..saes import SAE, SAEConfig, create_sae
from .files import check_tensors, fold_input_bias, read_npz

WEIGHTS_FILE = "params.npz"
_REPO = re.compile(r"gemma-scope-([\w.-]+?)-(res|mlp|att|transcoders)(?:$|[-_/])")
_LAYER = re.compile(r"layer_(\d+)")


def load_gemma_scope(path: Path) -> SAE:
    """Our JumpReLU SAE of a Gemma Scope `params.npz` (the file, or the folder that holds it)."""
    path = path / WEIGHTS_FILE if path.is_dir() else path
    tensors = {("W_" + name[2:] if name.startswith("w_") else name): t for name, t in read_npz(path).items()}
    if "W_dec" not in tensors or tensors["W_dec"].ndim != 2:
        raise SAEFileError(f"{path} lacks a 2-D W_dec (found: {', '.join(sorted(tensors)) or 'nothing'}); it is not a "
                           "Gemma Scope SAE — re-download params.npz")
    d_sae, d_in = tensors["W_dec"].shape
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}
    check_tensors(path, tensors, expected, f"its decoder ({d_sae} latents of width {d_in})")
    scale = tensors.get("scaling_factor")
    if scale is not None and not bool((scale == 1).all()):
        raise SAEFileError(f"{path} holds a fine-tuning scaling factor other than 1, which is not supported")
    weights = fold_input_bias({name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")})
    cfg = SAEConfig(architecture="jumprelu", d_in=d_in, d_sae=d_sae, **_provenance(path))
    return create_sae(cfg).load_tensors({**weights, "threshold": tensors["threshold"]})


def _provenance(path: Path) -> dict[str, Any]:
    """The site and model from the path, when it keeps the repository's name and the layer folder."""
    text = path.resolve().as_posix()
    repo, layer = _REPO.search(text.replace("--", "/")), _LAYER.search(text)
    if repo and repo.group(2) in ("att", "transcoders"):
        what = "attention SAEs read hook_z (the heads before the output projection)" if repo.group(2) == "att" else \
            "transcoders map MLP input to output"
        raise SAEFileError(f"{path}: Gemma Scope {what}, which is not a site here; import a -res or -mlp SAE")
    hook = {"res": "resid_post", "mlp": "mlp_out"}.get(repo.group(2)) if repo else None
    metadata = {"converted_from": "gemma_scope", **({"gemma_scope_release": repo.group(0).strip("-_/")} if repo else {})}
    return {"hook_name": f"blocks.{layer.group(1)}.hook_{hook}" if hook and layer else "", "metadata": metadata}

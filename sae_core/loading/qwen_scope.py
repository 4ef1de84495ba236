"""Qwen Scope SAEs (`layerN.sae.pt` files of the Qwen/SAE-Res-{model}-W{N}K-L0_{k} repositories) converted to our TopK SAE.

Each file is a state dict read with `torch.load(weights_only=True)`: `W_enc (d_sae, d_in)`, `W_dec (d_in, d_sae)`,
`b_enc`, `b_dec`, encoding the per-token top-k of `relu(x @ W_enc.T + b_enc)` — no `b_dec` on the input, folded into
`b_enc` here. The residual-stream site comes from the file name (`layer12.sae.pt` → `blocks.12.hook_resid_post`) and
k from the repository name in the path (`…-L0_50`, kept by the Hugging Face cache), as SAELens's converter reads them.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SAEFileError
from ..saes import SAE, SAEConfig, create_sae
from .files import check_tensors, fold_input_bias, read_pt

FILE_PATTERN = re.compile(r"layer(\d+)\.sae\.pt")
_REPO = re.compile(r"SAE-Res-(.+?)-W(\d+)K-L0_(\d+)")


def load_qwen_scope(path: Path) -> SAE:
    """Our TopK SAE of a Qwen Scope `layerN.sae.pt` file."""
    tensors = read_pt(path)
    if "W_dec" not in tensors or tensors["W_dec"].ndim != 2:
        raise SAEFileError(f"{path} lacks a 2-D W_dec (found: {', '.join(sorted(tensors))}); it is not a Qwen Scope SAE")
    d_in, d_sae = tensors["W_dec"].shape
    expected = {"W_enc": (d_sae, d_in), "b_enc": (d_sae,), "W_dec": (d_in, d_sae), "b_dec": (d_in,)}
    check_tensors(path, tensors, expected, f"its decoder ({d_sae} latents of width {d_in})")
    repo = _REPO.search(path.resolve().as_posix())
    if repo is None:
        raise SAEFileError(f"{path}: cannot tell k (the top-k of a Qwen Scope SAE is in its repository's name, "
                           "SAE-Res-MODEL-WNK-L0_K); keep the file under its repository's folder, as the Hugging Face cache does")
    layer = FILE_PATTERN.fullmatch(path.name)
    weights = fold_input_bias({"W_enc": tensors["W_enc"].float().T, "b_enc": tensors["b_enc"].float(),
                               "W_dec": tensors["W_dec"].float().T, "b_dec": tensors["b_dec"].float()})
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=int(repo.group(3)), model_name=f"Qwen/{repo.group(1)}",
                    hook_name=f"blocks.{layer.group(1)}.hook_resid_post" if layer else "",
                    metadata={"converted_from": "qwen_scope"})
    return create_sae(cfg).load_tensors(weights)

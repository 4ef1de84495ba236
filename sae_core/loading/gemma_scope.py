"""Gemma Scope SAEs converted to our JumpReLU SAE: Gemma Scope (Gemma 2, `params.npz`) and Gemma Scope 2 (Gemma 3,
`params.safetensors` + `config.json`).

Gemma Scope: `layer_L/width_W/average_l0_N/params.npz` in a repository named for model and site
(`gemma-scope-2b-pt-res`, `-mlp`, `-att`), read with `np.load(allow_pickle=False)`. Gemma Scope 2:
`SITE/layer_L_width_W_l0_SIZE/params.safetensors` in `gemma-scope-2-MODEL` (`SITE` = `resid_post`, `mlp_out`,
`attn_out`, `transcoder`, or the same with `_all`). Both hold `W_enc (d_in, d_sae)` (`w_enc` in version 2), `b_enc`,
`W_dec (d_sae, d_in)`, `b_dec` and a per-latent `threshold`, and encode `relu(x @ W_enc + b_enc)` above the
threshold — no `b_dec` on the input, folded into `b_enc` here. The site comes from the path; attention SAEs read
`hook_z` (the heads before the output projection), which is not a site here, and are refused. Transcoders
(`gemma-scope-2b-pt-transcoders`, Gemma Scope 2's `transcoder/`) read the MLP's normalised input and write the MLP
output (after Gemma's post-MLP norm): a transcoder site `L{i}T`, its `b_dec` an output bias (not folded). Those with an
affine skip connection (`affine_connection`, a `w_skip`) and cross-layer transcoders are refused. Give the site
yourself (`PATH=L12R`) when the path does not say it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import SAEFileError
from ..model.sites import Site
from ..saes import SAE, SAEConfig, create_sae
from .files import check_tensors, fold_input_bias, read_cfg, read_npz, read_tensors

WEIGHTS_FILE = "params.npz"
WEIGHTS_FILE_2 = "params.safetensors"
_REPO = re.compile(r"gemma-scope-([\w.-]+?)-(res|mlp|att|transcoders)(?:$|[-_/])")
_SITE_2 = re.compile(r"/(resid_post|mlp_out|attn_out|transcoder|clt)(?:_all)?/")
_LAYER = re.compile(r"layer_(\d+)")
_REFUSED = {"att": "attention SAEs read hook_z (the heads before the output projection)",
            "attn_out": "attention SAEs read hook_z (the heads before the output projection)",
            "clt": "cross-layer transcoders map MLP inputs to outputs"}
_KINDS = {"res": "resid_post", "mlp": "mlp_out", "resid_post": "resid_post", "mlp_out": "mlp_out",
          "transcoders": "transcoder", "transcoder": "transcoder"}
_TRANSCODER_INPUT = "pre_feedforward_layernorm.output"
"""Where Gemma Scope 2's transcoders read (`hf_hook_point_in`): the MLP's input after its norm, our `L{i}T`."""


def load_gemma_scope(path: Path) -> SAE:
    """Our JumpReLU SAE of a Gemma Scope `params.npz` or Gemma Scope 2 `params.safetensors` (the file or its folder)."""
    if path.is_dir():
        path = path / (WEIGHTS_FILE if (path / WEIGHTS_FILE).is_file() else WEIGHTS_FILE_2)
    raw = read_npz(path) if path.suffix == ".npz" else read_tensors(path)
    tensors = {("W_" + name[2:] if name.startswith("w_") else name): t.float() for name, t in raw.items()}
    if "W_dec" not in tensors or tensors["W_dec"].ndim != 2:
        raise SAEFileError(f"{path} lacks a 2-D W_dec (found: {', '.join(sorted(tensors)) or 'nothing'}); it is not a "
                           "Gemma Scope SAE — re-download it")
    d_sae, d_out = tensors["W_dec"].shape
    config = _config(path)
    provenance = _provenance(path, config)
    transcoder = bool(provenance.get("hook_name_out"))
    if transcoder and ("W_skip" in tensors or config.get("affine_connection")):
        raise SAEFileError(f"{path}: a Gemma Scope transcoder with an affine skip connection (w_skip) is not supported; "
                           "import one without it")
    d_in = int(tensors["W_enc"].shape[0]) if transcoder and "W_enc" in tensors and tensors["W_enc"].ndim == 2 else d_out
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,), "threshold": (d_sae,)}
    check_tensors(path, tensors, expected, f"its decoder ({d_sae} latents of width {d_out})")
    scale = tensors.get("scaling_factor")
    if scale is not None and not bool((scale == 1).all()):
        raise SAEFileError(f"{path} holds a fine-tuning scaling factor other than 1, which is not supported")
    weights = {name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if not transcoder:  # a transcoder's b_dec is an output bias: its encoder never subtracted it
        weights = fold_input_bias(weights)
    cfg = SAEConfig(architecture="jumprelu", d_in=d_in, d_sae=d_sae, d_out=d_out if transcoder else None, **provenance)
    return create_sae(cfg).load_tensors({**weights, "threshold": tensors["threshold"]})


def _config(path: Path) -> dict[str, Any]:
    """Gemma Scope 2's config.json beside the weights ({} for Gemma Scope, which has none); a JumpReLU is required."""
    cfg_path = path.parent / "config.json"
    if not cfg_path.is_file():
        return {}
    config = read_cfg(cfg_path)
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise SAEFileError(f"{cfg_path}: architecture {config['architecture']!r} is not a Gemma Scope JumpReLU SAE")
    return config


def _provenance(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The site and model from the path (the repository's name or the site folder, and `layer_L`)."""
    text = path.resolve().as_posix().replace("--", "/")
    repo, site_2, layer = _REPO.search(text), _SITE_2.search(text), _LAYER.search(path.resolve().as_posix())
    kind = site_2.group(1) if site_2 else repo.group(2) if repo else None
    if kind in _REFUSED:
        raise SAEFileError(f"{path}: Gemma Scope {_REFUSED[kind]}, which is not a site here; import a residual-stream "
                           "or MLP-output SAE")
    hook = _KINDS.get(kind or "")
    metadata: dict[str, Any] = {"converted_from": "gemma_scope_2" if config or path.suffix != ".npz" else "gemma_scope"}
    if config.get("hf_hook_point_in"):
        metadata["hf_hook_point_in"] = config["hf_hook_point_in"]
    out: dict[str, Any] = {"hook_name": f"blocks.{layer.group(1)}.hook_{hook}" if hook and layer else "", "metadata": metadata}
    if hook == "transcoder":
        point = str(config.get("hf_hook_point_in") or _TRANSCODER_INPUT)
        if not point.endswith(_TRANSCODER_INPUT):
            raise SAEFileError(f"{path}: this transcoder reads {point}, not the MLP's normalised input ({_TRANSCODER_INPUT})")
        if not layer:
            raise SAEFileError(f"{path}: cannot tell this transcoder's layer from its path; keep its layer_L folder in it")
        site = Site(int(layer.group(1)), "transcoder")
        out.update(hook_name=site.hook_name, hook_name_out=site.hook_name_out)
    if isinstance(config.get("model_name"), str):
        out["model_name"] = config["model_name"]
    return out

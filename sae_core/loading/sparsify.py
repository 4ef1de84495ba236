"""EleutherAI sparsify folders (`cfg.json` + `sae.safetensors`) converted to our TopK SAE.

sparsify stores `encoder.weight (d_sae, d_in)`, `encoder.bias (d_sae,)`, `W_dec (d_sae, d_in)`, `b_dec (d_in,)`
and encodes `topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))` — our TopK SAE with
`W_enc = encoder.weight.T`. The hookpoint is the folder's name (e.g. `layers.6`, `layers.6.mlp`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import SAEFileError, UserError
from ..saes import SAE, SAEConfig, create_sae
from .files import check_tensors, positive_int, read_cfg, read_tensors
from .saelens import CFG_FILE

WEIGHTS_FILE = "sae.safetensors"


def load_sparsify(folder: Path) -> SAE:
    """A TopK SAE from a sparsify folder; groupmax, skip connections and transcoders are refused."""
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    raw = read_cfg(cfg_path)
    missing = [key for key in ("d_in", "k") if key not in raw]
    if missing:
        raise SAEFileError(f"{cfg_path} lacks required key(s) {', '.join(missing)}; re-save the sparse coder with sparsify")
    for key, what in (("transcode", "transcoders"), ("skip_connection", "skip connections")):
        if raw.get(key):
            raise SAEFileError(f"{cfg_path}: sparsify {what} ({key}: true) are not supported; use a plain sparsify SAE")
    if raw.get("activation", "topk") != "topk":
        raise SAEFileError(f"{cfg_path}: sparsify activation {raw['activation']!r} is not supported; supported: topk")
    d_in, k = positive_int(raw, "d_in", cfg_path), positive_int(raw, "k", cfg_path)

    tensors = read_tensors(weights_path)
    if "W_skip" in tensors:
        raise SAEFileError(f"{weights_path} holds a skip connection (W_skip), which is not supported; use a plain sparsify SAE")
    d_sae = _d_sae(raw, tensors, cfg_path)
    if k > d_sae:
        raise SAEFileError(f"{cfg_path}: k={k} exceeds the number of latents {d_sae}; fix the config")
    expected = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    check_tensors(weights_path, tensors, expected, f"{CFG_FILE} (d_in={d_in}, {d_sae} latents)")

    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, **_provenance(folder))
    return create_sae(cfg).load_tensors(
        {
            "W_enc": tensors["encoder.weight"].float().T,
            "b_enc": tensors["encoder.bias"].float(),
            "W_dec": tensors["W_dec"].float(),
            "b_dec": tensors["b_dec"].float(),
        }
    )


def _d_sae(raw: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> int:
    """Number of latents: `num_latents`, else `d_in * expansion_factor`, else the encoder's rows."""
    if raw.get("num_latents"):
        return positive_int(raw, "num_latents", path)
    if raw.get("expansion_factor"):
        return positive_int(raw, "d_in", path) * positive_int(raw, "expansion_factor", path)
    if "encoder.weight" in tensors and tensors["encoder.weight"].ndim == 2:
        return int(tensors["encoder.weight"].shape[0])
    raise SAEFileError(f"{path} gives neither num_latents nor expansion_factor; re-save the sparse coder with sparsify")


def _provenance(folder: Path) -> dict[str, Any]:
    """hook_name from the folder's name (the sparsify hookpoint), and model / dataset from sparsify's run config."""
    from ..model.sites import parse_site

    hookpoint = folder.resolve().name
    try:
        hook_name = parse_site(hookpoint).hook_name
    except UserError:
        hook_name = ""
    out: dict[str, Any] = {"hook_name": hook_name, "metadata": {"converted_from": "sparsify", "sparsify_hookpoint": hookpoint}}
    run_cfg = _run_config(folder.resolve().parent / "config.json")
    if isinstance(run_cfg.get("model"), str):
        out["model_name"] = run_cfg["model"]
    if isinstance(run_cfg.get("dataset"), str):
        out["dataset_path"] = run_cfg["dataset"]
    if isinstance(run_cfg.get("ctx_len"), int):
        out["context_size"] = run_cfg["ctx_len"]
    return out


def _run_config(path: Path) -> dict[str, Any]:
    """sparsify's training config beside the hookpoint folders (recognised by its "sae" key), or {}."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return cfg if isinstance(cfg, dict) and "sae" in cfg else {}

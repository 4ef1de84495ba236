"""SAELens folders: write ours (SAELens 6 format) and read SAELens 6.x and pre-6 ones.

A folder holds `cfg.json` and `sae_weights.safetensors`. Reading uses JSON and safetensors only.
Options SAELens applies at run time that we can express exactly (b_dec not subtracted from the input,
decoder-norm rescaling, a fine-tuning scale) are folded into the weights; others are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from .. import __version__
from ..errors import SAEFileError
from ..saes import INFERENCE_ARCHITECTURES, SAE, SAEConfig, create_sae
from .files import check_tensors, positive_int, read_cfg, read_tensors

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
SAE_FOLDER_FILES = frozenset({CFG_FILE, WEIGHTS_FILE, "sparsity.safetensors", "metrics.json"})
"""Files that `save_sae` may find in a folder it replaces (the old SAE's files and its metrics)."""

_FIELDS_IN_METADATA = ("model_name", "hook_name", "hook_name_out", "context_size", "dataset_path")
_TRANSCODER_ARCHITECTURES = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}
"""Our architecture -> SAELens's transcoder class. A TopK transcoder (SAELens has no such class) is written as a
"topk" SAE with `apply_b_dec_to_input: false`, `d_out` and `metadata.hook_name_out`: SAELens's TopKSAE then
computes exactly the transcoder, and its hooked models splice the output at `hook_name_out`."""
_PRE6_METADATA_KEYS = ("prepend_bos", "neuronpedia_id", "model_from_pretrained_kwargs", "seqpos_slice", "exclude_special_tokens")


# Writing ------------------------------------------------------------------------------------


def saelens_cfg(sae: SAE, extra_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SAELens 6 cfg.json of `sae`: what `SAE.load_from_disk` needs for its architecture, and our metadata."""
    cfg = sae.cfg
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "hook_head_index": None,
        "prepend_bos": False,
        **cfg.metadata,
    }
    metadata.update(
        sae_lens_version=SAELENS_FORMAT_VERSION,
        sae_lens_training_version=SAELENS_FORMAT_VERSION,
        model_name=cfg.model_name,
        hook_name=cfg.hook_name,
        dataset_path=cfg.dataset_path,
        context_size=cfg.context_size,
        sae_explorer_version=__version__,
    )
    if sae.architecture != "topk" and cfg.k is not None:
        metadata["training_k"] = cfg.k
    if cfg.transcoder:
        metadata["hook_name_out"] = cfg.hook_name_out
    metadata.update(extra_metadata or {})
    out: dict[str, Any] = {
        "architecture": _TRANSCODER_ARCHITECTURES.get(sae.architecture, sae.architecture) if cfg.transcoder else sae.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not cfg.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.transcoder:
        out["d_out"] = cfg.out_dim
    if sae.architecture == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    out["metadata"] = metadata
    return out


def save_sae(sae: SAE, folder: str | Path, *, extra_metadata: dict[str, Any] | None = None) -> None:
    """Write `sae` as a SAELens 6 folder (cfg.json + sae_weights.safetensors, contiguous float32), atomically.

    Both files go into a temporary sibling folder that is renamed into place once complete; an older
    SAE folder there (its cfg, weights, sparsity and metrics files) is replaced only then.
    """
    folder = Path(folder)
    text = json.dumps(saelens_cfg(sae, extra_metadata), indent=2) + "\n"
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in sae.state_tensors().items()}
    _check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CFG_FILE).write_text(text, encoding="utf-8")
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(folder: Path) -> None:
    """SAEFileError unless `folder` is absent or an SAE folder we may replace (nothing else would be lost)."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise SAEFileError(f"cannot save an SAE to {folder}: it is a file; choose a folder path")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in SAE_FOLDER_FILES)
    if foreign:
        raise SAEFileError(
            f"cannot save an SAE to {folder}: it holds other files ({', '.join(foreign[:5])}) that replacing it would delete; "
            "choose an empty or new folder"
        )


def _swap_into_place(tmp: Path, folder: Path) -> None:
    """Rename the complete `tmp` folder onto `folder`, deleting the old one only after the swap."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    old.rmdir()
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


# Reading a SAELens folder -------------------------------------------------------------------


def load_saelens(folder: Path) -> SAE:
    """An SAE from a SAELens folder (6.x or pre-6 cfg), with run-time options folded into the weights."""
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    raw = read_cfg(cfg_path)
    cfg, options = _parse_cfg(raw, cfg_path)
    tensors = read_tensors(weights_path)
    cls = INFERENCE_ARCHITECTURES[cfg.architecture]
    if cls.architecture == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").double().exp()
    expected = cls.tensor_shapes(cfg)
    check_tensors(weights_path, tensors, expected, f"{CFG_FILE} (d_in={cfg.d_in}, d_sae={cfg.d_sae})")
    weights = {name: tensors[name].to(torch.float64) for name in expected}
    _fold_options(weights, tensors, options, weights_path)
    return create_sae(cfg).load_tensors({name: t.float() for name, t in weights.items()})


def _parse_cfg(raw: dict[str, Any], path: Path) -> tuple[SAEConfig, dict[str, Any]]:
    """Our SAEConfig from a SAELens cfg (6.x keeps provenance in "metadata", pre-6 at the top level) + fold options."""
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}

    def get(key: str, *old_names: str) -> Any:
        for name in (key, *old_names):
            if name in meta:
                return meta[name]
            if name in raw:
                return raw[name]
        return None

    activation_fn = get("activation_fn", "activation_fn_str")
    fn_kwargs = get("activation_fn_kwargs") or {}
    k = raw.get("k", fn_kwargs.get("k") if isinstance(fn_kwargs, dict) else None)
    architecture = raw.get("architecture") or "standard"
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"  # pre-6 TopK SAEs were "standard" with a topk activation_fn
    if architecture in ("skip_transcoder", "jumprelu_skip_transcoder"):
        raise SAEFileError(f"{path}: {architecture} (a transcoder with a linear skip path, W_skip) is not supported; "
                           "use a transcoder without a skip connection")
    hook_name_out = str(get("hook_name_out") or "")
    transcoder = architecture in _TRANSCODER_ARCHITECTURES.values() or bool(hook_name_out)
    if transcoder:
        architecture = {v: k for k, v in _TRANSCODER_ARCHITECTURES.items()}.get(architecture, architecture)
        if not hook_name_out:
            raise SAEFileError(f"{path}: a transcoder needs hook_name_out (the site it writes) in its cfg or metadata; add it")
        if raw.get("apply_b_dec_to_input", False) is not False:
            raise SAEFileError(f"{path}: a transcoder cannot subtract b_dec (an output bias) from its input; "
                               "apply_b_dec_to_input must be false")

    missing = [key for key in ("d_in", "d_sae") if key not in raw]
    if architecture == "topk" and k is None:
        missing.append("k")
    if missing:
        raise SAEFileError(f"{path} lacks required key(s) {', '.join(missing)}; re-save the SAE with SAELens or SAE Explorer")
    if architecture not in INFERENCE_ARCHITECTURES:
        raise SAEFileError(
            f"{path}: architecture {architecture!r} is not supported; supported: {', '.join(sorted(INFERENCE_ARCHITECTURES))}"
        )
    if architecture == "standard" and activation_fn not in (None, "relu"):
        raise SAEFileError(f"{path}: activation function {activation_fn!r} is not supported; supported: relu, topk")
    _refuse_runtime_transforms(raw, get, path)

    d_in, d_sae = positive_int(raw, "d_in", path), positive_int(raw, "d_sae", path)
    d_out = positive_int(raw, "d_out", path) if transcoder and "d_out" in raw else (d_in if transcoder else None)
    if architecture == "topk":
        k = positive_int({"k": k}, "k", path)
        if k > d_sae:
            raise SAEFileError(f"{path}: k={k} exceeds d_sae={d_sae}; fix the config")
    else:
        k = meta.get("training_k") if isinstance(meta.get("training_k"), int) else None
    if meta:
        metadata = {key: v for key, v in meta.items() if key not in (*_FIELDS_IN_METADATA, "training_k")}
    else:
        metadata = {key: raw[key] for key in _PRE6_METADATA_KEYS if key in raw}
    context_size = get("context_size")
    cfg = SAEConfig(
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        hook_name=str(get("hook_name", "hook_point") or ""),
        model_name=str(get("model_name") or ""),
        context_size=context_size if isinstance(context_size, int) and not isinstance(context_size, bool) else None,
        dataset_path=str(get("dataset_path") or ""),
        metadata=metadata,
        hook_name_out=hook_name_out,
        d_out=d_out,
    )
    options = {
        # a transcoder's pre_acts never subtract b_dec: nothing to fold
        "apply_b_dec_to_input": True if transcoder else raw.get("apply_b_dec_to_input", True),
        "rescale_acts_by_decoder_norm": architecture == "topk" and bool(raw.get("rescale_acts_by_decoder_norm", False)),
        "finetuning_scaling_factor": bool(raw.get("finetuning_scaling_factor", False)),
    }
    if not isinstance(options["apply_b_dec_to_input"], bool):
        raise SAEFileError(f"{path}: apply_b_dec_to_input must be true or false, found {options['apply_b_dec_to_input']!r}")
    return cfg, options


def _refuse_runtime_transforms(raw: dict[str, Any], get: Any, path: Path) -> None:
    """SAEFileError for input transforms that SAELens applies at run time and that no weights can express."""
    norm = raw.get("normalize_activations", "none")
    if norm is True or norm == "expected_average_only_in":
        raise SAEFileError(
            f"{path}: normalize_activations={norm!r} needs a scaling factor that the folder does not store; "
            "fold it into the weights first (SAELens: sae.fold_activation_norm_scaling_factor(factor), then save_model)"
        )
    if norm not in (None, False, "none"):
        raise SAEFileError(
            f"{path}: normalize_activations={norm!r} (a per-token transform) is not supported; use an SAE trained with 'none'"
        )
    if raw.get("reshape_activations", "none") not in (None, "none") or get("hook_head_index") is not None:
        raise SAEFileError(
            f"{path}: per-head SAEs (reshape_activations / hook_head_index) are not supported; "
            "use an SAE on hook_resid_post, hook_mlp_out or hook_attn_out"
        )


def _fold_options(weights: dict[str, Tensor], tensors: dict[str, Tensor], options: dict[str, Any], path: Path) -> None:
    """Fold SAELens run-time options into `weights` (float64, in place) so that the canonical formulas hold."""
    W_enc, W_dec = weights["W_enc"], weights["W_dec"]
    if options["rescale_acts_by_decoder_norm"]:
        # pre * |W_dec row| selects and scales; acts / |W_dec row| decode: move the norms into W_enc, b_enc.
        norms = W_dec.norm(dim=1).clamp_min(1e-12)
        weights["W_enc"] = W_enc = W_enc * norms
        weights["b_enc"] = weights["b_enc"] * norms
        weights["W_dec"] = W_dec = W_dec / norms[:, None]
    if "scaling_factor" in tensors:
        scaling = tensors["scaling_factor"].to(torch.float64)
        if scaling.shape != (W_dec.shape[0],):
            raise SAEFileError(f"{path}: tensor scaling_factor has shape {tuple(scaling.shape)}, expected ({W_dec.shape[0]},); re-save the SAE")
        if options["finetuning_scaling_factor"] or not bool((scaling == 1).all()):
            weights["W_dec"] = W_dec = W_dec * scaling[:, None]  # decode used (acts * scaling_factor) @ W_dec
    if not options["apply_b_dec_to_input"]:
        # pre = x @ W_enc + b_enc = (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
        weights["b_enc"] = weights["b_enc"] + weights["b_dec"] @ W_enc

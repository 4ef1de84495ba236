"""Llama Scope folders (OpenMOSS's lm-saes: `hyperparams.json` + `checkpoints/final.safetensors`) converted to our SAEs.

A Llama Scope release (`fnlp/Llama3_1-8B-Base-LX{R,M,A}-{8,32}x`) holds one folder per SAE,
`Llama3_1-8B-Base-L15R-8x/`, with `nn.Linear` weights `encoder.weight (d_sae, d_model)`, `encoder.bias`,
`decoder.weight (d_model, d_sae)`, `decoder.bias`. This reader does what lm-saes's own `SparseAutoEncoder.from_pretrained`
does before it encodes (the version the release's notebook loads with):

1. `norm_activation: "dataset-wise"`: the SAE was trained on activations scaled to norm √d_model by one factor per
   hook, `s = √d_model / dataset_average_activation_norm`; the factors are folded into the weights
   (`encoder.bias / s_in`, `decoder.bias / s_out`, `decoder.weight · s_in / s_out`) so raw activations go in.
2. `sparsity_include_decoder_norm: true`: each latent's decoder norm is moved into the encoder (decoder columns made
   unit norm, encoder row and bias multiplied by the norm).
3. `act_fn: "jumprelu"` (or `"topk"` with a `jump_relu_threshold`, which lm-saes turns into a JumpReLU):
   `pre · (pre > jump_relu_threshold)` with one scalar threshold; `"topk"` without one keeps the `top_k` largest.

A *transcoder* (`hook_point_in` ≠ `hook_point_out`; lm-saes trains them from `blocks.L.ln2.hook_normalized`, the MLP's
normalised input, to `blocks.L.hook_mlp_out`, our site `L{L}T`) goes through the same steps with its own input and output
norms; its `decoder.bias` is an output bias, subtracted from the input only if `apply_decoder_bias_to_pre_encoder` says
so (lm-saes's default; its config says to turn it off for transcoders), and then folded into `b_enc`. lm-saes runs its
models unprocessed (`from_pretrained_no_processing`), so `ln2.hook_normalized` is after the norm's weight: the MLP
module's input, which is what `L{L}T` reads.

Keys the file leaves out take lm-saes's defaults. SAELens's own converter (`saelens:llama_scope_…`) gates on the
pre-activations *before* step 2 (it ignores the decoder norms, about 1.5 on average in the released SAEs), so the latents
it fires differ; registry names of these releases are read here instead. Refused, each with its reason: per-token or
per-batch normalisation (not a fixed linear map) and GLU encoders.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import SAEFileError
from ..saes import SAE, SAEConfig, create_sae
from .files import check_tensors, fold_input_bias, positive_int, read_cfg, read_tensors

CFG_FILE = "hyperparams.json"
WEIGHTS_FILES = ("sae_weights.safetensors", "checkpoints/pruned.safetensors", "checkpoints/final.safetensors")
"""Where lm-saes looks for the weights, in its order."""
DEFAULTS: dict[str, Any] = {
    "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": True, "expansion_factor": 128, "d_model": 768,
    "act_fn": "relu", "jump_relu_threshold": 0.0, "norm_activation": "token-wise", "dataset_average_activation_norm": None,
    "sparsity_include_decoder_norm": True, "use_glu_encoder": False, "top_k": 50,
}
"""lm-saes's `SAEConfig` defaults, for keys a hyperparams.json leaves out."""
_MODELS = {"Llama3_1-8B-Base": "meta-llama/Llama-3.1-8B"}
"""Folder-name prefixes of the releases -> the model they were trained on (hyperparams.json does not name it)."""


def folder_of_weights(path: Path) -> Path | None:
    """The Llama Scope folder whose weights file `path` is (the folder is what to read), else None."""
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return folder if (folder / CFG_FILE).is_file() and any(folder / name == path for name in WEIGHTS_FILES) else None


def load_llama_scope(folder: Path) -> SAE:
    """Our SAE of the Llama Scope folder `folder`, encoding as lm-saes's `from_pretrained` SAE does."""
    hp = {**DEFAULTS, **read_cfg(folder / CFG_FILE)}
    hook_in = str(hp.get("hook_point_in") or "")
    hook_out = str(hp.get("hook_point_out") or hook_in)
    transcoder = hook_out != hook_in
    _refuse(folder, hp)
    architecture, k, threshold = _activation(hp, folder)
    d_model = positive_int(hp, "d_model", folder / CFG_FILE)
    d_sae = positive_int(hp, "d_sae", folder / CFG_FILE) if hp.get("d_sae") else d_model * positive_int(hp, "expansion_factor", folder / CFG_FILE)
    path = next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)
    if path is None:
        raise SAEFileError(f"{folder} has {CFG_FILE} but no weights ({', '.join(WEIGHTS_FILES)}); download the whole "
                           "SAE folder (its checkpoints/ subfolder too)")
    tensors = read_tensors(path)
    expected = {"encoder.weight": (d_sae, d_model), "encoder.bias": (d_sae,), "decoder.weight": (d_model, d_sae)}
    if hp["use_decoder_bias"]:
        expected["decoder.bias"] = (d_model,)
    check_tensors(path, tensors, expected, f"{CFG_FILE} (d_model={d_model}, d_sae={d_sae})")
    weights = _standardise(hp, {name: t.double() for name, t in tensors.items()}, d_model, folder)
    subtracts_b_dec = hp["use_decoder_bias"] and hp["apply_decoder_bias_to_pre_encoder"]
    if transcoder and subtracts_b_dec:  # our transcoders' encoders never subtract b_dec: fold it into b_enc
        weights["b_enc"] = weights["b_enc"] - weights["b_dec"] @ weights["W_enc"]
    elif not transcoder and not subtracts_b_dec:  # our SAEs' encoders always do: fold it the other way
        weights = fold_input_bias(weights)
    if threshold is not None:
        weights["threshold"] = torch.full((d_sae,), threshold, dtype=torch.float64)
    cfg = SAEConfig(architecture=architecture, d_in=d_model, d_sae=d_sae, k=k, hook_name=hook_in,
                    hook_name_out=hook_out if transcoder else "", d_out=d_model if transcoder else None,
                    model_name=next((m for prefix, m in _MODELS.items() if folder.name.startswith(prefix)), ""),
                    metadata={"converted_from": "llama_scope", "norm_activation": hp["norm_activation"],
                              "dataset_average_activation_norm": hp["dataset_average_activation_norm"]})
    return create_sae(cfg).load_tensors({name: t.float() for name, t in weights.items()})


def _refuse(folder: Path, hp: dict[str, Any]) -> None:
    """SAEFileError for what has no equivalent here: input-dependent normalisation, GLU encoders."""
    if hp["norm_activation"] not in ("dataset-wise", "inference", "none"):
        raise SAEFileError(f"{folder}: norm_activation {hp['norm_activation']!r} rescales every input by its own norm, "
                           "which no fixed SAE reproduces; only dataset-wise (or already folded) normalisation is read")
    if hp["use_glu_encoder"]:
        raise SAEFileError(f"{folder}: GLU encoders (use_glu_encoder) have no equivalent here")


def _standardise(hp: dict[str, Any], t: dict[str, Tensor], d_model: int, folder: Path) -> dict[str, Tensor]:
    """Steps 1 and 2 of the module docstring, in float64: our `W_enc (d_in, d_sae)`, `b_enc`, `W_dec (d_sae, d_in)`,
    `b_dec` reading raw activations, with unit-norm decoder rows when the SAE's sparsity counted decoder norms."""
    W_enc, b_enc, W_dec = t["encoder.weight"].T, t["encoder.bias"], t["decoder.weight"].T
    b_dec = t["decoder.bias"] if hp["use_decoder_bias"] else torch.zeros(d_model, dtype=torch.float64)
    if hp["norm_activation"] == "dataset-wise":
        s_in, s_out = (math.sqrt(d_model) / norm for norm in _average_norms(hp, folder))
        b_enc, b_dec, W_dec = b_enc / s_in, b_dec / s_out, W_dec * (s_in / s_out)
    if hp["sparsity_include_decoder_norm"]:
        norms = W_dec.norm(dim=1)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))  # a latent with no decoder direction stays as is
        W_dec, W_enc, b_enc = W_dec / norms[:, None], W_enc * norms, b_enc * norms
    return {"W_enc": W_enc.contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(), "b_dec": b_dec}


def _average_norms(hp: dict[str, Any], folder: Path) -> tuple[float, float]:
    """The dataset's average activation norm at the SAE's input and output ({"in", "out"}, or keyed by hook name)."""
    norms = hp["dataset_average_activation_norm"]
    hook_in = hp.get("hook_point_in")
    if isinstance(norms, dict):
        pair = (norms.get("in", norms.get(hook_in)), norms.get("out", norms.get(hp.get("hook_point_out") or hook_in)))
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in pair):
            return float(pair[0]), float(pair[1])  # type: ignore[arg-type]
    raise SAEFileError(f"{folder / CFG_FILE}: norm_activation is dataset-wise but dataset_average_activation_norm is "
                       f"{norms!r}, not positive in/out norms; re-download the release's {CFG_FILE}")


def _activation(hp: dict[str, Any], folder: Path) -> tuple[str, int | None, float | None]:
    """(architecture, k, JumpReLU threshold) of lm-saes's act_fn at inference."""
    act, threshold = str(hp["act_fn"]).lower(), hp["jump_relu_threshold"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise SAEFileError(f"{folder / CFG_FILE}: jump_relu_threshold must be a number, found {threshold!r}")
    if act == "jumprelu" or (act == "topk" and threshold > 0):
        return "jumprelu", None, float(threshold)
    if act == "topk":
        return "topk", positive_int(hp, "top_k", folder / CFG_FILE), None
    if act == "relu":
        return "standard", None, None
    raise SAEFileError(f"{folder / CFG_FILE}: act_fn {hp['act_fn']!r} is not one lm-saes defines (relu, topk, jumprelu)")

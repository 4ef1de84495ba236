"""dictionary_learning folders (`ae.pt` + `config.json`, saprmarks/dictionary_learning) converted to our SAEs.

`ae.pt` is the SAE's `state_dict()`, read with `torch.load(weights_only=True)`. The classes and how each encodes:

| `dict_class` | tensors | encode | ours |
|---|---|---|---|
| `AutoEncoder` | `encoder.weight/bias`, `decoder.weight`, `bias` | `relu(encoder(x - bias))` | standard |
| `AutoEncoderTopK` | `encoder.*`, `decoder.weight`, `b_dec`, `k`, `threshold` | per-token top-k of `relu(encoder(x - b_dec))` | topk |
| `BatchTopKSAE` | as TopK | `relu(·) * (relu(·) > threshold)`, one scalar threshold | jumprelu |
| `MatryoshkaBatchTopKSAE` | `W_enc`, `b_enc`, `W_dec`, `b_dec`, `k`, `threshold`, `group_sizes` | as BatchTopK | jumprelu |
| `JumpReluAutoEncoder` | `W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold` | `relu(x @ W_enc + b_enc)` above the threshold (no `b_dec` on the input) | jumprelu |

Normalisation: dictionary_learning trains on activations divided by `norm_factor` and saves the weights with the biases
(and threshold) multiplied by it, so the saved SAE reads raw activations; nothing to undo. `AutoEncoder.from_pretrained`
rescales the decoder to unit-norm columns (folded into the encoder), and so does this reader. The threshold of a
BatchTopK SAE that never set one (-1) keeps every positive latent, as the library does. Gated SAEs are refused.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import SAEFileError
from ..saes import SAE, SAEConfig, create_sae
from .files import check_tensors, fold_input_bias, read_cfg, read_pt, require_tensors

WEIGHTS_FILE = "ae.pt"
CFG_FILE = "config.json"
_SUBMODULE = re.compile(r"(resid_post|mlp_out|attn_out)_layer_(\d+)")


def load_dictionary_learning(folder: Path) -> SAE:
    """Our SAE of the dictionary_learning `ae.pt` in `folder`, encoding as the library's own class does."""
    weights_path = folder / WEIGHTS_FILE
    tensors = read_pt(weights_path)
    trainer = _trainer_config(folder / CFG_FILE)
    dict_class = trainer.get("dict_class") or _guess_class(tensors, weights_path)
    convert = _CLASSES.get(dict_class)
    if convert is None:
        raise SAEFileError(f"{folder}: dictionary_learning class {dict_class!r} is not supported; supported: "
                           f"{', '.join(_CLASSES)} (gated SAEs have no equivalent here)")
    architecture, weights, k = convert(tensors, weights_path)
    d_sae, d_in = weights["W_dec"].shape
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        expected["threshold"] = (d_sae,)
    check_tensors(weights_path, weights, expected, f"its decoder ({d_sae} latents of width {d_in})")
    cfg = SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, k=k, **_provenance(trainer, dict_class))
    return create_sae(cfg).load_tensors({name: t.float() for name, t in weights.items()})


def _trainer_config(path: Path) -> dict[str, Any]:
    """The "trainer" section of dictionary_learning's config.json ({} without the file)."""
    if not path.is_file():
        return {}
    trainer = read_cfg(path).get("trainer", {})
    return trainer if isinstance(trainer, dict) else {}


def _guess_class(tensors: dict[str, Tensor], path: Path) -> str:
    """The class a state dict belongs to when config.json does not say (TopK and BatchTopK cannot be told apart)."""
    if "bias" in tensors and "encoder.weight" in tensors:
        return "AutoEncoder"
    if "W_enc" in tensors and "threshold" in tensors and "k" not in tensors:
        return "JumpReluAutoEncoder"
    if "group_sizes" in tensors:
        return "MatryoshkaBatchTopKSAE"
    raise SAEFileError(f"{path}: cannot tell the SAE class from its tensors ({', '.join(sorted(tensors))}); keep the "
                       f"{CFG_FILE} that dictionary_learning saved beside it (its trainer.dict_class says which)")


def _k(tensors: dict[str, Tensor], path: Path) -> int:
    if "k" not in tensors or tensors["k"].numel() != 1:
        raise SAEFileError(f"{path} lacks the k buffer of a top-k SAE; the file is incomplete — re-save the SAE")
    return int(tensors["k"].item())


def _threshold(tensors: dict[str, Tensor], d_sae: int) -> Tensor:
    """A per-latent threshold from the scalar one (at most -1 … 0 keeps every positive latent either way)."""
    threshold = tensors["threshold"].float()
    return threshold.expand(d_sae).clone() if threshold.numel() == 1 else threshold


def _standard(tensors: dict[str, Tensor], path: Path) -> tuple[str, dict[str, Tensor], int | None]:
    _require(tensors, ("encoder.weight", "encoder.bias", "decoder.weight", "bias"), path)
    W_enc, b_enc, W_dec = tensors["encoder.weight"].double().T, tensors["encoder.bias"].double(), tensors["decoder.weight"].double().T
    norms = W_dec.norm(dim=1)  # from_pretrained(normalize_decoder=True): unit decoder rows, the encoder rescaled
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return "standard", {"W_enc": W_enc * norms, "b_enc": b_enc * norms, "W_dec": W_dec / norms[:, None],
                        "b_dec": tensors["bias"]}, None


def _linear(tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    _require(tensors, ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec"), path)
    return {"W_enc": tensors["encoder.weight"].T, "b_enc": tensors["encoder.bias"], "W_dec": tensors["decoder.weight"].T,
            "b_dec": tensors["b_dec"]}


def _topk(tensors: dict[str, Tensor], path: Path) -> tuple[str, dict[str, Tensor], int | None]:
    return "topk", _linear(tensors, path), _k(tensors, path)


def _batchtopk(tensors: dict[str, Tensor], path: Path) -> tuple[str, dict[str, Tensor], int | None]:
    _require(tensors, ("threshold",), path)
    weights = _linear(tensors, path)
    return "jumprelu", {**weights, "threshold": _threshold(tensors, weights["W_enc"].shape[1])}, None


def _w_params(tensors: dict[str, Tensor], path: Path, *, fold: bool) -> tuple[str, dict[str, Tensor], int | None]:
    """The classes that hold `W_enc`, `W_dec` as parameters: Matryoshka subtracts `b_dec` from the input as we do,
    JumpReluAutoEncoder does not (`fold`)."""
    _require(tensors, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), path)
    weights = {name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    weights = fold_input_bias(weights) if fold else weights
    return "jumprelu", {**weights, "threshold": _threshold(tensors, weights["W_enc"].shape[1])}, None


_CLASSES = {
    "AutoEncoder": _standard,
    "AutoEncoderTopK": _topk,
    "BatchTopKSAE": _batchtopk,
    "MatryoshkaBatchTopKSAE": partial(_w_params, fold=False),
    "JumpReluAutoEncoder": partial(_w_params, fold=True),
}


def _require(tensors: dict[str, Tensor], names: tuple[str, ...], path: Path) -> None:
    require_tensors(path, tensors, names, "another dictionary_learning class than its config.json says")


def _provenance(trainer: dict[str, Any], dict_class: str) -> dict[str, Any]:
    """hook_name from the trainer's submodule name (e.g. resid_post_layer_12), model and where it came from."""
    found = _SUBMODULE.fullmatch(str(trainer.get("submodule_name", "")))
    out: dict[str, Any] = {
        "hook_name": f"blocks.{found.group(2)}.hook_{found.group(1)}" if found else "",
        "metadata": {"converted_from": "dictionary_learning", "dictionary_learning_class": dict_class},
    }
    if isinstance(trainer.get("lm_name"), str):
        out["model_name"] = trainer["lm_name"]
    return out

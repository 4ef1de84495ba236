"""Reading SAE files safely (JSON and safetensors only) with errors that name the file and the fix."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ..errors import SAEFileError, first_line


def read_cfg(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or SAEFileError when it is unreadable, not JSON or not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SAEFileError(f"cannot read {path}: {e}; check the file's permissions and encoding (UTF-8 JSON)") from e
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise SAEFileError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); re-save the SAE or fix the file") from e
    if not isinstance(cfg, dict):
        raise SAEFileError(f"{path} must hold a JSON object of config keys, found {type(cfg).__name__}; re-save the SAE")
    return cfg


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file (on CPU), or SAEFileError when it is corrupt or truncated."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises SafetensorError, OSError or ValueError on a damaged file
        raise SAEFileError(f"{path} is corrupt or truncated ({first_line(e)}); re-save or re-download the SAE") from e


def require_tensors(path: Path, tensors: dict[str, Tensor], names: Iterable[str], other: str) -> None:
    """SAEFileError naming the tensors of `names` that `tensors` lacks (`other`: what else the file may be)."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise SAEFileError(f"{path} lacks tensor(s) {', '.join(missing)} (found: {', '.join(sorted(tensors)) or 'none'}); "
                           f"the file is incomplete or of {other}")


def check_tensors(path: Path, tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """SAEFileError unless `tensors` holds every expected name with the expected shape, as finite floats.

    `what` says where the expected shapes come from, e.g. "cfg.json (d_in=64, d_sae=256)".
    """
    require_tensors(path, tensors, expected, "another architecture — re-save the SAE")
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise SAEFileError(
                f"{path}: tensor {name} has shape {tuple(t.shape)} but {what} implies {shape}; the weights and the config do not belong together"
            )
        if not t.is_floating_point():
            raise SAEFileError(f"{path}: tensor {name} has dtype {t.dtype}, expected floating point; re-save the SAE")
        if not bool(torch.isfinite(t).all()):
            raise SAEFileError(f"{path}: tensor {name} holds NaN or infinite values; the SAE is broken — retrain or re-download it")


def positive_int(cfg: dict[str, Any], key: str, path: Path) -> int:
    """`cfg[key]` as a positive int, or SAEFileError."""
    value = cfg[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEFileError(f"{path}: {key} must be a positive integer, found {value!r}; fix the config")
    return value


def read_pt(path: Path) -> dict[str, Tensor]:
    """The tensors of a PyTorch `.pt` state dict, read with `torch.load(weights_only=True)` (never a full unpickle);
    SAEFileError when the file is damaged or holds anything but a mapping of names to tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects weights_only refuses; EOFError / RuntimeError when damaged
        raise SAEFileError(f"{path} is not a plain state dict of tensors ({first_line(e, 200)}); only tensors are read from "
                           ".pt files, never other Python objects — re-save it as a dict of tensors or as safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        found = type(state).__name__ if not isinstance(state, dict) else "a dict with non-tensor values"
        raise SAEFileError(f"{path} holds {found}, expected a state dict of tensors; re-save the SAE's state_dict()")
    return state


def read_npz(path: Path) -> dict[str, Tensor]:
    """The arrays of a NumPy `.npz` file as float32 tensors, read with `allow_pickle=False`; SAEFileError when damaged."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: torch.from_numpy(np.asarray(data[name], dtype=np.float32)) for name in data.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (object arrays), OSError
        raise SAEFileError(f"{path} is not a readable .npz of numeric arrays ({first_line(e, 200)}); re-download it") from None


def fold_input_bias(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """SAE weights for encoders that do not subtract `b_dec` from the input (`pre = x @ W_enc + b_enc`, as Gemma
    Scope, Qwen Scope and dictionary_learning's JumpReLU) in our convention `pre = (x - b_dec) @ W_enc + b_enc`:
    `b_enc + b_dec @ W_enc` gives the same pre-activations."""
    folded = dict(tensors)
    b_enc = tensors["b_enc"].double() + tensors["b_dec"].double() @ tensors["W_enc"].double()
    folded["b_enc"] = b_enc.to(tensors["b_enc"].dtype)
    return folded

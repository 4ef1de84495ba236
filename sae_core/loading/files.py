"""Reading SAE files safely (JSON and safetensors only) with errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ..errors import SAEFileError


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
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SAEFileError(f"{path} is corrupt or truncated ({reason}); re-save or re-download the SAE") from e


def check_tensors(path: Path, tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """SAEFileError unless `tensors` holds every expected name with the expected shape, as finite floats.

    `what` says where the expected shapes come from, e.g. "cfg.json (d_in=64, d_sae=256)".
    """
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise SAEFileError(
            f"{path} lacks tensor(s) {', '.join(missing)} (found: {', '.join(sorted(tensors)) or 'none'}); "
            "the file is incomplete or of another architecture — re-save the SAE"
        )
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

"""Device selection shared by training, evaluation and the app."""

from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` → cuda when available, else cpu; a CUDA device asked for but absent is a clear error."""
    if isinstance(name, torch.device):  # already chosen (e.g. a torchrun rank's cuda:LOCAL_RANK)
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a model or SAE lives on (that of its first parameter; every module here keeps one device)."""
    return next(module.parameters()).device

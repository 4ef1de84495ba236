"""SAE architectures behind one registry: each maps to (inference class, training class).

Adding an architecture means one new file with its two classes plus one line in `ARCHITECTURES`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserError
from .base import SAE, SAEConfig, SAETrainingOptions, TrainingSAE, TrainOutput
from .batchtopk import BatchTopKTrainingSAE
from .jumprelu import JumpReLUSAE, JumpReLUTrainingSAE
from .standard import StandardSAE, StandardTrainingSAE
from .topk import TopKSAE, TopKTrainingSAE

ARCHITECTURES: dict[str, tuple[type[SAE], type[TrainingSAE]]] = {
    "topk": (TopKSAE, TopKTrainingSAE),
    "batchtopk": (JumpReLUSAE, BatchTopKTrainingSAE),
    "jumprelu": (JumpReLUSAE, JumpReLUTrainingSAE),
    "standard": (StandardSAE, StandardTrainingSAE),
}
"""Architecture name -> (inference class, training class). BatchTopK runs as JumpReLU at inference."""

INFERENCE_ARCHITECTURES: dict[str, type[SAE]] = {cls.architecture: cls for cls, _ in ARCHITECTURES.values()}
"""Architectures an SAE file can hold (what `to_inference` produces): name -> inference class."""


def _lookup(architecture: str) -> tuple[type[SAE], type[TrainingSAE]]:
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown SAE architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


def create_training_sae(cfg: SAEConfig, train_opts: SAETrainingOptions, generator: torch.Generator | None = None) -> TrainingSAE:
    """A freshly initialised training SAE of `cfg.architecture` (deterministic given the CPU `generator`)."""
    return _lookup(cfg.architecture)[1](cfg, train_opts, generator)


def create_sae(cfg: SAEConfig) -> SAE:
    """An inference SAE of `cfg.architecture` with zero weights (fill it with `load_tensors`)."""
    cls = _lookup(cfg.architecture)[0]
    return cls(cfg if cfg.architecture == cls.architecture else cfg.replace(architecture=cls.architecture))


def sae_from_state(cfg: SAEConfig, tensors: dict[str, Tensor]) -> SAE:
    """An inference SAE from its config and tensors by SAELens name (`W_enc`, `b_enc`, `W_dec`, `b_dec`[, `threshold`])."""
    return create_sae(cfg).load_tensors(tensors)


__all__ = [
    "ARCHITECTURES",
    "INFERENCE_ARCHITECTURES",
    "SAE",
    "SAEConfig",
    "SAETrainingOptions",
    "TrainOutput",
    "TrainingSAE",
    "TopKSAE",
    "TopKTrainingSAE",
    "BatchTopKTrainingSAE",
    "JumpReLUSAE",
    "JumpReLUTrainingSAE",
    "StandardSAE",
    "StandardTrainingSAE",
    "create_sae",
    "create_training_sae",
    "sae_from_state",
]

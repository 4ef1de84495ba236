"""JumpReLU SAE (Rajamanoharan et al. 2024, as SAELens's JumpReLUTrainingSAE): a learned per-latent threshold.

The threshold gets gradients through straight-through pseudo-derivatives with a rectangle kernel of
width `jumprelu_bandwidth`; the L0 penalty counts active latents with a Step function.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import SAE, SAEConfig, SAETrainingOptions, TrainingSAE, TrainOutput, warmup


class JumpReLUSAE(SAE):
    """Inference JumpReLU SAE: `acts = relu(pre) * (pre > threshold)` (= SAELens JumpReLUSAE)."""

    architecture = "jumprelu"

    @classmethod
    def tensor_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().tensor_shapes(cfg), "threshold": (cfg.d_sae,)}

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.threshold)


def _rectangle(z: Tensor) -> Tensor:
    """1 on (-1/2, 1/2), else 0: the kernel of the pseudo-derivatives."""
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """`pre * (pre > threshold)`; d/dpre is the mask, d/dthreshold is `-(threshold / bandwidth) K((pre - threshold) / bandwidth)`."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        """pre: (N, d_sae), threshold: (d_sae,) -> (N, d_sae)."""
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_threshold = (-(threshold / bw) * _rectangle((pre - threshold) / bw) * grad).sum(0)
        return (pre > threshold) * grad, grad_threshold, None


class StepFunction(torch.autograd.Function):
    """`1[pre > threshold]`; no gradient to pre, d/dthreshold is `-(1 / bandwidth) K((pre - threshold) / bandwidth)`."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        """pre: (N, d_sae), threshold: (d_sae,) -> (N, d_sae) of 0/1."""
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        return None, (-(1.0 / bw) * _rectangle((pre - threshold) / bw) * grad).sum(0), None


class JumpReLUTrainingSAE(TrainingSAE):
    """JumpReLU SAE in training: loss = MSE + (warmed-up) l0_coefficient · mean L0.

    The threshold is a plain parameter kept >= 0 after every step (SAELens 6.x), not a log-threshold:
    Adam moves a parameter by about lr per step, so a log-threshold could only grow a 0.01 init
    by a factor e^(lr · steps) — far too little in a run of a few thousand steps.
    """

    inference_cls = JumpReLUSAE

    def __init__(self, cfg: SAEConfig, train_cfg: SAETrainingOptions, generator: torch.Generator | None = None):
        super().__init__(cfg, train_cfg, generator)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), float(train_cfg.jumprelu_init_threshold)))

    def training_forward(self, x: Tensor, *, dead_mask: Tensor | None, step_frac: float) -> TrainOutput:
        bw = self.train_cfg.jumprelu_bandwidth
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        acts = JumpReLUFunction.apply(pre, self.threshold, bw)
        x_hat = acts @ self.W_dec + self.b_dec
        rows = self.batch.rows(x.shape[0])  # means over the whole batch, so ranks' terms add up
        mse = (x_hat - x).pow(2).sum() / rows
        l0_penalty = StepFunction.apply(pre, self.threshold, bw).sum() / rows
        coef = self.train_cfg.l0_coefficient * warmup(step_frac, self.train_cfg.l0_warmup_frac)
        active = acts.detach() > 0
        return TrainOutput(x_hat, {"mse": mse, "l0": coef * l0_penalty}, active.any(0), active.sum(-1).float().mean())

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Renormalise decoder rows and keep thresholds >= 0 (below 0 the gate would pass negative pre-activations)."""
        super().after_optimizer_step()
        self.threshold.clamp_(min=0.0)

    def to_inference(self, scale: float, scale_out: float | None = None) -> SAE:
        return self._build_inference(JumpReLUSAE, self.cfg, scale, {"threshold": self.threshold}, scale_out)

"""Standard SAE: ReLU latents with an L1 penalty (Anthropic's April 2024 update, with unit-norm decoder rows)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SAE, TrainingSAE, TrainOutput, warmup


class StandardSAE(SAE):
    """Inference ReLU SAE: `acts = relu(pre_acts)` (= SAELens StandardSAE)."""

    architecture = "standard"

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu()


class StandardTrainingSAE(TrainingSAE):
    """ReLU SAE in training: loss = MSE + (linearly warmed-up) l1_coefficient · mean over tokens of Σ acts.

    Decoder rows are unit-norm, so the L1 of the activations equals Anthropic's decoder-norm-weighted L1.
    """

    inference_cls = StandardSAE

    def training_forward(self, x: Tensor, *, dead_mask: Tensor | None, step_frac: float) -> TrainOutput:
        acts = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc).relu()
        x_hat = acts @ self.W_dec + self.b_dec
        rows = self.batch.rows(x.shape[0])  # means over the whole batch, so ranks' terms add up
        mse = (x_hat - x).pow(2).sum() / rows
        coef = self.train_cfg.l1_coefficient * warmup(step_frac, self.train_cfg.l1_warmup_frac)
        active = acts.detach() > 0
        return TrainOutput(x_hat, {"mse": mse, "l1": coef * acts.sum() / rows}, active.any(0), active.sum(-1).float().mean())

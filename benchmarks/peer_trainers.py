"""One TopK SAE training step of each trainer compared in `train_vs_peers.py`, behind one interface.

Each adapter does what its library's own trainer does per optimiser step, minus logging to disk:
  ours            sae_core's SiteTrainer (fused blocked encoder, sparse decoder, fused Adam)
  plain           the same SAE with the dense reference losses and PyTorch's default Adam
  sparsify        EleutherAI sparsify's SparseCoder with its fused encoder (its Trainer's step)
  saelens         SAELens's TopKTrainingSAE, default settings (its SAETrainer._train_step)
  saelens-sparse  the same with use_sparse_activations=True (and rescale_acts_by_decoder_norm off, which
                  that path needs: with it on, backward fails on torch 2.13)
  matmul          not a trainer: the encoder matmul alone (four addmm blocks of 1,024 × d_in × d_sae), the one
                  piece of work no TopK trainer can skip; ours ÷ it is how close our step comes to that bound
All see the same normalised activations, batch, k, width, learning rate (constant) and seed, and
track dead latents (tokens since last fired) the way their trainer does, feeding AuxK when any die.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae_core.activations.harvest import SiteStats
from sae_core.model.sites import parse_sites
from sae_core.saes import SAEConfig, SAETrainingOptions, create_training_sae
from sae_core.saes.cpu_matmul import encoder_block
from sae_core.saes.reference import reference_losses
from sae_core.training.config import TrainConfig
from sae_core.training.site_trainer import SiteTrainer

TRAINERS = ("ours", "plain", "sparsify", "saelens", "saelens-sparse", "matmul", "matmul-ours")
DEAD_TOKENS = 10_000_000  # sparsify's default dead_feature_threshold; never reached in a benchmark-length run


class Trainer:
    """A TopK SAE and its optimiser: `step(x)` trains on one batch, `reconstruct(x)` evaluates."""

    name: str

    def step(self, x: Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class Ours(Trainer):
    name = "ours"

    def __init__(self, d_in: int, d_sae: int, k: int, lr: float, init: Tensor, steps: int):
        cfg = TrainConfig(
            k=k, d_sae=d_sae, tokens=steps * init.shape[0], batch_size=init.shape[0], lr=lr,
            lr_warmup_frac=0.0, lr_decay_frac=0.0, dead_tokens=DEAD_TOKENS,
        )
        sae = create_training_sae(SAEConfig("topk", d_in, d_sae, k=k), SAETrainingOptions(), torch.Generator().manual_seed(0))
        sae = sae.to(init.device)
        sae.init_from_data(init)
        site = parse_sites("L0R", 1)[0]
        self.trainer = SiteTrainer(site, sae, SiteStats(1.0, 1.0, None, 1.0), cfg)

    def step(self, x: Tensor) -> None:
        self.trainer.step(x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.trainer.to_inference()(x)


class Plain(Ours):
    """Our SAE and trainer loop, but the textbook dense losses and PyTorch's default (for-each) Adam."""

    name = "plain"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sae = self.trainer.sae
        self.opt = torch.optim.Adam(sae.parameters(), lr=self.trainer.base_lr)
        self.since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_dec.device)

    def step(self, x: Tensor) -> None:
        sae = self.trainer.sae
        dead = self.since_fired >= DEAD_TOKENS
        _, losses, fired = reference_losses(sae, x, dead)
        self.opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        sae.before_optimizer_step()
        self.opt.step()
        sae.after_optimizer_step()
        self.since_fired += x.shape[0]
        self.since_fired[fired] = 0


class Sparsify(Trainer):
    name = "sparsify"

    def __init__(self, d_in: int, d_sae: int, k: int, lr: float, init: Tensor, steps: int):
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(0)
        self.sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=init.device)
        self.sae.b_dec.data = init.mean(0)  # what its Trainer does on the first batch
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=init.device)
        self.auxk_alpha = SAETrainingOptions().auxk_alpha

    def step(self, x: Tensor) -> None:
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x, dead_mask=self.since_fired > DEAD_TOKENS)
        (out.fvu + self.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[out.latent_indices.flatten()] = 0

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.sae(x).sae_out


class SAELens(Trainer):
    name = "saelens"

    def __init__(self, d_in: int, d_sae: int, k: int, lr: float, init: Tensor, steps: int, sparse: bool = False):
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        torch.manual_seed(0)
        # Its sparse path fails in backward with rescale_acts_by_decoder_norm on (aten::view on a sparse tensor)
        extra = {"rescale_acts_by_decoder_norm": False} if sparse else {}
        cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(init.device), use_sparse_activations=sparse, **extra)
        self.sae = TopKTrainingSAE(cfg)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)  # SAETrainer: Adam, betas (0.9, 0.999)
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=init.device)  # in forward passes, as SAELens
        self.dead_window = DEAD_TOKENS // init.shape[0]
        self.steps = 0
        if sparse:
            self.name = "saelens-sparse"

    def step(self, x: Tensor) -> None:
        from sae_lens.saes.sae import TrainStepInput

        sae = self.sae
        sae.train()
        out = sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=x, coefficients={}, dead_neuron_mask=self.since_fired > self.dead_window,
                n_training_steps=self.steps, is_logging_step=False,
            )
        )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            if did_fire.is_sparse:
                did_fire = did_fire.to_dense()
            self.since_fired += 1
            self.since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.steps += 1

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        self.sae.eval()
        return self.sae(x)


class MatmulAlone(Trainer):
    """The encoder's pre-activations of a batch and nothing else: `addmm(b_enc, x, W_enc)` a block of rows at a time
    into one reused buffer, with the weights laid out as ours (`W_enc` a view of the per-latent `(d_sae, d_in)`)."""

    name = "matmul"
    ROWS = 1024
    multiply = staticmethod(lambda b, x, W, out: torch.addmm(b, x, W, out=out))

    def __init__(self, d_in: int, d_sae: int, k: int, lr: float, init: Tensor, steps: int):
        g = torch.Generator().manual_seed(0)
        self.W_enc = (torch.randn(d_sae, d_in, generator=g) / d_in**0.5).to(init.device).T
        self.b_enc = torch.zeros(d_sae, device=init.device)
        self.buffer = torch.empty(min(self.ROWS, init.shape[0]), d_sae, device=init.device)

    def step(self, x: Tensor) -> None:
        for start in range(0, x.shape[0], self.ROWS):
            rows = x[start : start + self.ROWS]
            self.multiply(self.b_enc, rows, self.W_enc, self.buffer[: rows.shape[0]])

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        raise NotImplementedError("the matmul alone reconstructs nothing")


class MatmulOurs(MatmulAlone):
    """The same blocks through `cpu_matmul.encoder_block`: the BLAS our step multiplies with on this machine
    (numpy's OpenBLAS on an AMD CPU, PyTorch's MKL elsewhere; `SAE_EXPLORER_MATMUL` overrides)."""

    name = "matmul-ours"
    multiply = staticmethod(encoder_block)


def make_trainer(name: str, d_in: int, d_sae: int, k: int, lr: float, init: Tensor, steps: int) -> Trainer:
    """The adapter for `name` (one of TRAINERS); `init` is the first training batch (bias initialisation)."""
    if name == "saelens-sparse":
        return SAELens(d_in, d_sae, k, lr, init, steps, sparse=True)
    cls = {"ours": Ours, "plain": Plain, "sparsify": Sparsify, "saelens": SAELens, "matmul": MatmulAlone,
           "matmul-ours": MatmulOurs}[name]
    return cls(d_in, d_sae, k, lr, init, steps)

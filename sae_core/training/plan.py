"""`train --dry-run`: check a configuration against its model and say what the job would hold, without training."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..model.batch_size import dtype_named
from ..model.load import load_model
from ..model.sites import Site
from ..parallel import Parallel
from .config import TrainConfig
from .trainer import check_job

ADAM_COPIES = 4
"""float32 copies of each SAE parameter while training: weights, gradient and Adam's two moments."""


@dataclass(frozen=True)
class TrainingPlan:
    """The SAEs a configuration trains and how a job of `ranks` processes shares them."""

    model: str
    n_layers: int
    d_in: int
    d_sae: int
    sites: list[Site]
    ranks: int
    mode: str
    saes_per_rank: int
    steps: int

    @property
    def sae_parameters(self) -> int:
        return 2 * self.d_in * self.d_sae + self.d_sae + self.d_in

    @property
    def bytes_per_rank(self) -> int:
        """SAE training state on the busiest rank (activations and the LM come on top)."""
        return self.saes_per_rank * self.sae_parameters * 4 * ADAM_COPIES

    def describe(self) -> str:
        kinds = sorted({s.kind for s in self.sites})
        return "\n".join([
            f"model       {self.model}: {self.n_layers} layers, d_model {self.d_in}",
            f"SAEs        {len(self.sites)} ({', '.join(kinds)}) of d_sae {self.d_sae:,} "
            f"({self.sae_parameters / 1e6:,.1f}M parameters each)",
            f"sites       {', '.join(s.short for s in self.sites)}",
            f"job         {self.ranks} rank(s), {self.mode} parallel: {self.saes_per_rank} SAE(s) per rank, "
            f"{self.bytes_per_rank / 2**30:,.2f} GiB of SAE training state per rank",
            f"steps       {self.steps:,} per SAE",
        ])


def plan_training(cfg: TrainConfig, ranks: int | None = None) -> TrainingPlan:
    """Load the model, resolve the sites and check every option as `train` would; nothing is written."""
    ranks = ranks or int(os.environ.get("WORLD_SIZE", "1"))
    loaded = load_model(cfg.model, device="cpu", dtype=dtype_named(cfg.lm_dtype, "--lm-dtype"))
    layout = loaded.layout
    sites, d_sae, owners = check_job(cfg, loaded, Parallel(world=ranks))
    per_rank = len(sites) if owners[0] is None else max(owners.count(r) for r in range(ranks))
    return TrainingPlan(
        loaded.name, layout.n_layers, layout.d_model, d_sae, sites, ranks, cfg.parallel, per_rank, -(-cfg.tokens // cfg.batch_size)
    )

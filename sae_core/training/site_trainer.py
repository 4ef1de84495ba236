"""One SAE being trained on one site: its optimiser, learning-rate schedule and dead-latent counters."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..activations.harvest import SiteStats
from ..devices import module_device
from ..model.sites import Site
from ..parallel.collectives import collect_rows
from ..parallel.row_exchange import carry_sizes, exchange_rows
from ..saes import SAE, TrainOutput
from .checkpoint import load_optimizer_tensors, optimizer_tensors
from .config import TrainConfig
from .schedule import lr_factor


def make_adam(params: Iterable[Tensor], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel where this build has it for the device (several times faster on CPU).

    The fused kernel assumes each gradient and state tensor has its parameter's memory layout, which
    autograd guarantees and `load_optimizer_tensors` restores.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas)


def site_seed(seed: int, site: Site, purpose: str) -> int:
    """A seed for one site's `purpose` (init, shuffle) that does not depend on which other sites are trained."""
    return zlib.crc32(f"{seed}:{purpose}:{site.hook_name}".encode())


class SiteTrainer:
    """Feeds shuffled batches of one site's activations to its training SAE, step by step.

    In data-parallel training every rank holds the same chunk and shuffle; `sae.batch` gives each rank
    its slice of every batch and sums gradients, dead-latent counts and logs over the ranks.
    """

    def __init__(self, site: Site, sae: Any, stats: SiteStats, cfg: TrainConfig):
        self.site = site
        self.sae = sae
        self.stats = stats
        self.cfg = cfg
        self.shuffle = torch.Generator().manual_seed(site_seed(cfg.seed, site, "shuffle"))
        self.total_steps = -(-cfg.tokens // cfg.batch_size)  # at least the token budget
        self.base_lr = cfg.resolved_lr(sae.cfg.d_sae)
        self.opt = make_adam(sae.parameters(), self.base_lr, tuple(cfg.adam_betas))  # type: ignore[arg-type]
        device = module_device(sae)
        self.since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
        self.carry = torch.empty(0, sae.cfg.row_width, device=device)
        self.carry_total = 0  # rows left for the next chunk, over all ranks
        self.carry_split = False  # data parallel: `carry` holds only this rank's slice of them
        self.steps = 0
        self._log: dict[str, Tensor | float] = {}
        self._log_n = 0

    @property
    def done(self) -> bool:
        return self.steps >= self.total_steps

    @property
    def tokens(self) -> int:
        return self.steps * self.cfg.batch_size

    def feed(self, rows: Tensor) -> None:
        """Train on a chunk of raw activations `(N, d_in)`: filter outliers, scale, shuffle, step."""
        keep = self.stats.keep_mask(rows).nonzero().squeeze(1)
        perm = torch.randperm(keep.numel(), generator=self.shuffle).to(rows.device)
        # one gather for filter + shuffle, scaled in place: the chunk is copied once, not three times
        x = torch.cat([self.carry, self.stats.scale_(rows.index_select(0, keep[perm]))])
        used, bs = 0, self.cfg.batch_size
        while used + bs <= x.shape[0] and not self.done:
            self.step(self.sae.batch.shard(x[used : used + bs]))
            used += bs
        # Rows that do not fill a batch wait for the next chunk (they are part of the checkpoint).
        self.carry = x[used:].clone() if not self.done else x[:0].clone()
        self.carry_total = self.carry.shape[0]

    def feed_rank_rows(self, rows: Tensor, batch_rows: list[int]) -> None:
        """Data parallel: train on a chunk of which this rank holds the rows of its own batches (`rows`),
        fetching from the other ranks just the rows of its slices of the steps (`parallel.row_exchange`)."""
        scope = self.sae.batch
        par, bs = scope.par, self.cfg.batch_size
        b = bs // par.world
        if not self.carry_split:  # a whole leftover (a fresh start or a checkpoint): keep this rank's slice
            self.carry = self.carry[par.rank * b : (par.rank + 1) * b]
            self.carry_split = True
        received, n_steps, tail = exchange_rows(
            rows, self.stats.keep_mask(rows), batch_rows, self.carry_total, self.shuffle, bs, self.total_steps - self.steps, par
        )
        x = torch.cat([self.carry, self.stats.scale_(received)])
        for s in range(n_steps):
            self.step(x[s * b : (s + 1) * b])
        self.carry = x[n_steps * b :].clone() if tail else x[:0].clone()
        self.carry_total = tail

    def whole_carry(self) -> Tensor:
        """Every rank's leftover rows, in order (what one process would hold): checkpoints stay rank-count free."""
        if not self.carry_split or self.carry_total == 0:  # (every rank agrees on both)
            return self.carry
        scope = self.sae.batch
        sizes = carry_sizes(self.carry_total, self.cfg.batch_size // scope.world, scope.world)
        return torch.cat(collect_rows(self.carry, sizes, None, scope.par))  # type: ignore[arg-type]

    def step(self, x: Tensor) -> TrainOutput:
        """One optimiser step on a batch `x (batch_size, d_in)` of normalised activations (this rank's slice of it)."""
        dead = self.since_fired >= self.cfg.dead_tokens
        out = self.sae.training_forward(
            x, dead_mask=dead, step_frac=self.steps / max(1, self.total_steps)
        )
        loss = sum(out.losses.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        scope = self.sae.batch
        scope.reduce_grads(self.sae.parameters())
        self.sae.before_optimizer_step()
        lr = self.base_lr * lr_factor(self.steps, self.total_steps, self.cfg.lr_warmup_frac, self.cfg.lr_decay_frac)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.sae.after_optimizer_step()
        self.since_fired += scope.rows(x.shape[0])
        self.since_fired[scope.any(out.fired)] = 0
        self.steps += 1
        self._accumulate(x, out, lr)
        return out

    @torch.no_grad()
    def _accumulate(self, x: Tensor, out: TrainOutput, lr: float) -> None:
        # Kept as tensors on the SAE's device until `pop_log`: no host-device sync per logged value.
        # Each is this rank's share of the whole batch's value (all of it in one process): pop_log sums them.
        scope = self.sae.batch
        if "fvu" in out.losses:  # TopK and BatchTopK train on exactly this rank's share of the batch's FVU
            fvu = out.losses["fvu"].detach()
        else:
            fvu = (x - out.x_hat).pow(2).sum() / scope.sum((x - scope.mean_rows(x)).pow(2).sum())
        share = x.shape[0] / scope.rows(x.shape[0])
        values = {"fvu": fvu, "l0": out.l0 * share, **{f"loss_{k}": v.detach() for k, v in out.losses.items()}}
        for k, v in values.items():
            self._log[k] = self._log.get(k, 0.0) + v
        self._log["lr"] = self._log.get("lr", 0.0) + lr
        self._log_n += 1

    def pop_log(self) -> dict[str, float]:
        """Mean training metrics since the last call (plus the current dead fraction)."""
        names = [k for k in self._log if k != "lr"]
        if names:
            summed = self.sae.batch.sum(torch.stack([torch.as_tensor(self._log[k]).float() for k in names]))
            self._log.update(zip(names, summed))
        record = {k: float(v) / max(1, self._log_n) for k, v in self._log.items()}
        record["dead_fraction"] = float((self.since_fired >= self.cfg.dead_tokens).float().mean())
        record["tokens"] = self.tokens
        self._log, self._log_n = {}, 0
        return record

    def to_inference(self) -> SAE:
        """The trained SAE in canonical form, in the model's original activation units."""
        return self.sae.to_inference(self.stats.scale, self.stats.scale_out)

    # Checkpointing -----------------------------------------------------------------------

    def state(self, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON metadata that restore this trainer exactly (data parallel: every rank calls it)."""
        tensors = {f"{prefix}sae.{k}": v for k, v in self.sae.state_dict().items()}
        opt_tensors, opt_meta = optimizer_tensors(self.opt, f"{prefix}opt.")
        tensors.update(opt_tensors)
        tensors[f"{prefix}since_fired"] = self.since_fired
        tensors[f"{prefix}carry"] = self.whole_carry()
        tensors[f"{prefix}shuffle"] = self.shuffle.get_state()
        meta = {"steps": self.steps, "stats": self.stats.to_dict(), "optimizer": opt_meta}
        return tensors, meta

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any], prefix: str) -> None:
        """Restore from `state()` output."""
        device = self.since_fired.device
        sae_state = {k[len(prefix) + 4 :]: v for k, v in tensors.items() if k.startswith(prefix + "sae.")}
        self.sae.load_state_dict(sae_state)
        opt = {k: v.to(device) for k, v in tensors.items() if k.startswith(prefix + "opt.")}
        load_optimizer_tensors(self.opt, opt, prefix + "opt.", meta["optimizer"])
        self.since_fired = tensors[prefix + "since_fired"].to(device)
        self.carry = tensors[prefix + "carry"].to(device)
        self.carry_total, self.carry_split = self.carry.shape[0], False
        self.shuffle.set_state(tensors[prefix + "shuffle"])
        self.steps = int(meta["steps"])

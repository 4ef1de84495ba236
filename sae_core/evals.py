"""Every SAE metric, computed on held-out tokens: reconstruction, sparsity and model-level recovery.

Definitions (aggregated over the whole evaluation set, never per batch):

- explained variance = 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖², with x̄ the mean over the set; fvu = 1 - explained variance
- mse = Σ‖x - x̂‖² / (N · d_in) (mean over elements)
- l0 = mean number of active latents per token
- dead fraction = latents that never fired over the evaluation tokens; dense fraction = latents
  firing on more than `dense_threshold` of them
- CE-loss recovered = (CE_zero_ablation - CE_sae) / (CE_zero_ablation - CE_clean), where the SAE
  reconstruction (or zero) replaces the site's activation at the real, non-outlier tokens
- KL = mean over predicted positions of KL(p_clean ‖ p_sae); delta LM loss = CE_sae - CE_clean

Only real tokens count (not position 0 of a context, not special tokens); next-token losses are
taken at positions whose target is a real token. Tokens whose activation norm is above the SAE's
recorded outlier threshold (attention sinks) are excluded from reconstruction metrics and are not
spliced; their fraction is reported as `outlier_fraction`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .harvest import batch_activations
from .hooks import splice
from .models import LoadedModel
from .parallel import Parallel, all_reduce_
from .saes import SAE
from .sites import Site
from .tokens import TokenBatch

DENSE_THRESHOLD = 0.1


@dataclass
class ReconstructionAccumulator:
    """Streaming sums for reconstruction and sparsity metrics of one SAE (float64 accumulators)."""

    d_in: int
    d_sae: int
    dense_threshold: float = DENSE_THRESHOLD
    n: int = 0
    n_outliers: int = 0
    sse: float = 0.0
    sum_sq: float = 0.0
    nnz: int = 0
    cos_sum: float = 0.0
    ratio_sum: float = 0.0
    sum_x: Tensor = field(init=False)
    fire_counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        self.fire_counts = torch.zeros(self.d_sae, dtype=torch.long)

    @torch.no_grad()
    def update(self, x: Tensor, acts: Tensor, x_hat: Tensor, n_outliers: int = 0) -> None:
        """Add a batch: inputs `x (N, d_in)`, activations `acts (N, d_sae)`, reconstructions `x_hat (N, d_in)`."""
        x64, e64 = x.double(), (x - x_hat).double()
        self.n += x.shape[0]
        self.n_outliers += n_outliers
        self.sse += float(e64.pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        self.sum_x += x64.sum(0).cpu()
        active = acts > 0
        self.nnz += int(active.sum())
        self.fire_counts += active.sum(0).cpu()
        self.cos_sum += float(F.cosine_similarity(x, x_hat, dim=-1).double().sum())
        self.ratio_sum += float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).double().sum())

    def reduce_(self) -> None:
        """Sum the counts of every rank (each evaluated its share of the batches) into every rank's accumulator."""
        scalars = torch.tensor([self.n, self.n_outliers, self.sse, self.sum_sq, self.nnz, self.cos_sum, self.ratio_sum], dtype=torch.float64)
        packed = all_reduce_(torch.cat([scalars, self.sum_x, self.fire_counts.double()]))
        n, n_outliers, self.sse, self.sum_sq, nnz, self.cos_sum, self.ratio_sum = packed[:7].tolist()
        self.n, self.n_outliers, self.nnz = int(n), int(n_outliers), int(nnz)
        self.sum_x = packed[7 : 7 + self.d_in].clone()
        self.fire_counts = packed[7 + self.d_in :].round().long()

    def result(self) -> dict[str, float]:
        """The metrics over everything added so far."""
        if self.n == 0:
            raise ValueError("no evaluation tokens were seen")
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n
        density = self.fire_counts.double() / self.n
        return {
            "fvu": self.sse / total_var,
            "explained_variance": 1.0 - self.sse / total_var,
            "mse": self.sse / (self.n * self.d_in),
            "l0": self.nnz / self.n,
            "dead_fraction": float((self.fire_counts == 0).double().mean()),
            "dense_fraction": float((density > self.dense_threshold).double().mean()),
            "dense_threshold": self.dense_threshold,
            "cossim": self.cos_sum / self.n,
            "l2_ratio": self.ratio_sum / self.n,
            "eval_tokens": self.n,
            "outlier_fraction": self.n_outliers / (self.n + self.n_outliers),
        }


def next_token_loss(logits: Tensor, input_ids: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position log-probs and summed CE: `logits (B, T, V)`, ids/mask `(B, T)`; targets are ids[:, 1:].

    Returns `(logp (B, T-1, V), ce_sum)` where the CE sum runs over positions whose target is masked in.
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return logp, -(target_logp * target_mask[:, 1:]).sum()


def kl_sum(logp_clean: Tensor, logp_other: Tensor, target_mask: Tensor) -> Tensor:
    """Σ over masked positions of KL(p_clean ‖ p_other); log-probs `(B, T-1, V)`, mask `(B, T)`."""
    kl = (logp_clean.exp() * (logp_clean - logp_other)).sum(-1)
    return (kl * target_mask[:, 1:]).sum()


@dataclass
class CEAccumulator:
    """Streaming sums of next-token losses for one site: clean, SAE-spliced, zero-ablated."""

    n: float = 0.0
    clean: float = 0.0
    sae: float = 0.0
    ablated: float = 0.0
    kl: float = 0.0
    kl_ablated: float = 0.0

    def reduce_(self) -> None:
        """Sum every rank's sums into every rank's accumulator."""
        packed = all_reduce_(torch.tensor([self.n, self.clean, self.sae, self.ablated, self.kl, self.kl_ablated], dtype=torch.float64))
        self.n, self.clean, self.sae, self.ablated, self.kl, self.kl_ablated = packed.tolist()

    def result(self) -> dict[str, float]:
        ce_clean, ce_sae, ce_abl = self.clean / self.n, self.sae / self.n, self.ablated / self.n
        gap = ce_abl - ce_clean
        return {
            "ce_loss_clean": ce_clean,
            "ce_loss_sae": ce_sae,
            "ce_loss_zero_ablation": ce_abl,
            "ce_loss_recovered": (ce_abl - ce_sae) / gap if gap != 0 else float("nan"),
            "kl_div": self.kl / self.n,
            "kl_div_zero_ablation": self.kl_ablated / self.n,
            "delta_lm_loss": ce_sae - ce_clean,
            "ce_tokens": int(self.n),
        }


def non_outliers(x: Tensor, threshold: float | None) -> Tensor:
    """`(..., )` bool: activations whose norm is within the outlier threshold (all of them when there is none)."""
    if threshold is None:
        return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    return x.norm(dim=-1) <= threshold


def _splice_fn(real: Tensor, threshold: float | None, new: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A splice function: `new(x)` at real tokens `(B, T)` whose norm is within the threshold, `x` elsewhere."""

    def fn(x: Tensor) -> Tensor:
        mask = (real.to(x.device) & non_outliers(x, threshold))[..., None]
        return torch.where(mask, new(x), x)

    return fn


def outlier_threshold(sae: SAE) -> float | None:
    """The outlier norm threshold recorded at training time, if any."""
    value = sae.cfg.metadata.get("outlier_norm_threshold")
    return float(value) if value is not None else None


@torch.no_grad()
def evaluate_saes(
    loaded: LoadedModel,
    saes: dict[Site, SAE],
    batches: Iterable[TokenBatch],
    *,
    eval_tokens: int,
    ce_tokens: int,
    progress: Callable[[int], None] | None = None,
    par: Parallel = Parallel(),
) -> dict[Site, dict[str, Any]]:
    """Evaluate SAEs on held-out token batches: reconstruction on `eval_tokens` real tokens,
    CE-loss recovered and KL on the first `ce_tokens` of them. Returns metrics per site.

    With several ranks (`par`), batch j is evaluated by rank j % world and the sums are added up at
    the end: the same batches and metrics as one process, with 1/world of the forward passes each.
    """
    sites = list(saes)
    recon = {s: ReconstructionAccumulator(saes[s].cfg.d_in, saes[s].cfg.d_sae) for s in sites}
    ce = {s: CEAccumulator() for s in sites}
    thresholds = {s: outlier_threshold(saes[s]) for s in sites}
    seen_recon = seen_ce = 0
    for j, batch in enumerate(batches):
        if seen_recon >= eval_tokens and seen_ce >= ce_tokens:
            break
        real = batch.real
        n_real = int(real.sum())
        mine = j % par.world == par.rank
        if seen_recon < eval_tokens and mine:
            acts = batch_activations(loaded, sites, batch)
            for s in sites:
                x = acts[s][real.to(acts[s].device)]
                keep = non_outliers(x, thresholds[s])
                x = x[keep]
                latents = saes[s].encode(x)
                recon[s].update(x, latents, saes[s].decode(latents), n_outliers=int((~keep).sum()))
        if seen_ce < ce_tokens and mine:
            _ce_batch(loaded, saes, thresholds, batch, ce)
        seen_recon += n_real if seen_recon < eval_tokens else 0
        seen_ce += n_real if seen_ce < ce_tokens else 0
        if progress:
            progress(n_real)
    if par.distributed:
        for s in sites:
            recon[s].reduce_()
            ce[s].reduce_()
    results: dict[Site, dict[str, Any]] = {}
    for s in sites:
        results[s] = {**recon[s].result(), **(ce[s].result() if ce[s].n else {})}
    return results


def _ce_batch(
    loaded: LoadedModel,
    saes: dict[Site, SAE],
    thresholds: dict[Site, float | None],
    batch: TokenBatch,
    ce: dict[Site, CEAccumulator],
) -> None:
    """One batch of clean, SAE-spliced and zero-ablated forward passes for every site."""
    model = loaded.model
    device = next(model.parameters()).device
    ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
    target_mask = batch.real.to(device).float()
    logp_clean, ce_clean = next_token_loss(model(input_ids=ids, attention_mask=attn).logits, ids, target_mask)
    n = float(target_mask[:, 1:].sum())
    for s, sae in saes.items():
        with splice(model, s, _splice_fn(batch.real, thresholds[s], sae), layout=loaded.layout):
            logp_sae, ce_sae = next_token_loss(model(input_ids=ids, attention_mask=attn).logits, ids, target_mask)
        with splice(model, s, _splice_fn(batch.real, thresholds[s], torch.zeros_like), layout=loaded.layout):
            logp_abl, ce_abl = next_token_loss(model(input_ids=ids, attention_mask=attn).logits, ids, target_mask)
        acc = ce[s]
        acc.n += n
        acc.clean += float(ce_clean)
        acc.sae += float(ce_sae)
        acc.ablated += float(ce_abl)
        acc.kl += float(kl_sum(logp_clean, logp_sae, target_mask))
        acc.kl_ablated += float(kl_sum(logp_clean, logp_abl, target_mask))

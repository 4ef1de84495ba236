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

Flags, so that no number misleads (docs/suite.md):

- CE-loss recovered is a ratio over the zero-ablation gap; where zero-ablating the site moves the loss by
  less than `CE_GAP_MIN` nats the ratio is noise, so `ce_loss_recovered` is None ("n/a") and
  `ce_loss_recovered_raw` keeps the value with `ce_loss_recovered_note` saying why.
- The dead fraction is counted over the evaluation tokens (`dead_window_tokens`); when a latent firing at a
  tenth of the average density (L0 / d_sae) would stay silent over that window with probability above 5%
  (`expected_fires` < `DEAD_WINDOW_MIN_FIRES`), `dead_fraction_note` warns that the window is too short.
- `delta_lm_loss_se` is the standard error of the delta LM loss over the predicted positions.

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

from ..activations.harvest import batch_activations, site_rows
from ..activations.outliers import non_outliers, outlier_threshold
from ..devices import module_device
from ..model.hooks import splice
from ..model.load import LoadedModel
from ..model.replay import LayerReplay
from ..model.sites import Site
from ..parallel import Parallel, all_reduce_
from ..saes import SAE
from ..text.tokens import TokenBatch

DENSE_THRESHOLD = 0.1
CE_GAP_MIN = 0.05
"""Nats: below this zero-ablation gap (CE_zero_ablation - CE_clean), CE-loss recovered is reported as n/a."""
DEAD_WINDOW_MIN_FIRES = 30.0
"""Fires a latent of average density must expect over the window for "dead" to be trusted: at 30, a latent at a
tenth of the average density stays silent by chance with probability e^-3 ≈ 5%."""


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
        expected_fires = self.nnz / self.d_sae  # fires of a latent of average density over the window
        fvu = self.sse / total_var if total_var > 0 else float("nan")  # a constant site has no variance to explain
        return {
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "mse": self.sse / (self.n * self.d_in),
            "l0": self.nnz / self.n,
            "dead_fraction": float((self.fire_counts == 0).double().mean()),
            "dead_window_tokens": self.n,
            "dead_fraction_note": dead_window_note(self.n, expected_fires),
            "dense_fraction": float((density > self.dense_threshold).double().mean()),
            "dense_threshold": self.dense_threshold,
            "cossim": self.cos_sum / self.n,
            "l2_ratio": self.ratio_sum / self.n,
            "eval_tokens": self.n,
            "outlier_fraction": self.n_outliers / (self.n + self.n_outliers),
        }


def dead_window_note(window: int, expected_fires: float) -> str | None:
    """A warning when `window` tokens are too few for "never fired" to mean dead (see DEAD_WINDOW_MIN_FIRES)."""
    if expected_fires >= DEAD_WINDOW_MIN_FIRES:
        return None
    return (f"counted over only {window:,} tokens, in which a latent of average density fires {expected_fires:.1f} times "
            f"(under {DEAD_WINDOW_MIN_FIRES:.0f}): rarer live latents are likely counted dead; evaluate on more tokens")


def next_token_loss(logits: Tensor, input_ids: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position log-probs and per-position CE: `logits (B, T, V)`, ids/mask `(B, T)`; targets are ids[:, 1:].

    Returns `(logp (B, T-1, V), nll (B, T-1))`, the CE zeroed at positions whose target is masked out.
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return logp, -(target_logp * target_mask[:, 1:])


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
    delta_sq: float = 0.0
    """Σ over positions of (CE_sae - CE_clean)², for the standard error of the delta LM loss."""

    _FIELDS = ("n", "clean", "sae", "ablated", "kl", "kl_ablated", "delta_sq")

    def reduce_(self) -> None:
        """Sum every rank's sums into every rank's accumulator."""
        packed = all_reduce_(torch.tensor([getattr(self, f) for f in self._FIELDS], dtype=torch.float64))
        for name, value in zip(self._FIELDS, packed.tolist()):
            setattr(self, name, value)

    def result(self) -> dict[str, Any]:
        ce_clean, ce_sae, ce_abl = self.clean / self.n, self.sae / self.n, self.ablated / self.n
        gap, delta = ce_abl - ce_clean, ce_sae - ce_clean
        recovered = (ce_abl - ce_sae) / gap if gap != 0 else float("nan")
        trusted = gap >= CE_GAP_MIN
        return {
            "ce_loss_clean": ce_clean,
            "ce_loss_sae": ce_sae,
            "ce_loss_zero_ablation": ce_abl,
            "ce_loss_recovered": recovered if trusted else None,
            "ce_loss_recovered_raw": recovered,
            "ce_loss_recovered_note": None if trusted else _gap_note(gap),
            "kl_div": self.kl / self.n,
            "kl_div_zero_ablation": self.kl_ablated / self.n,
            "delta_lm_loss": delta,
            "delta_lm_loss_se": max(self.delta_sq / self.n - delta**2, 0.0) ** 0.5 / self.n**0.5,
            "ce_tokens": int(self.n),
        }


def _gap_note(gap: float) -> str:
    """Why CE-loss recovered is n/a for a zero-ablation gap below CE_GAP_MIN."""
    if gap < 0:
        return f"n/a: zero ablation lowers the loss (by {-gap:.3f} nats), so there is no loss for the SAE to recover"
    return f"n/a: zero ablation changes the loss by only {gap:.3f} nats (under {CE_GAP_MIN} nats), so the ratio is noise"


def _splice_fn(site: Site, real: Tensor, threshold: float | None, new: Callable[[Tensor], Tensor]
               ) -> Callable[[Tensor, Tensor], Tensor]:
    """A splice function: `new(source)` at real tokens `(B, T)` whose rows' norm is within the threshold, `x` elsewhere
    (source: what the SAE reads; a transcoder's rows are its input and output side by side, as in training)."""

    def fn(x: Tensor, source: Tensor) -> Tensor:
        rows = site_rows(site, {site: source, site.target: x})
        mask = (real.to(x.device) & non_outliers(rows, threshold))[..., None]
        return torch.where(mask, new(source), x)

    return fn


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
    recon = {s: ReconstructionAccumulator(saes[s].cfg.out_dim, saes[s].cfg.d_sae) for s in sites}
    ce = {s: CEAccumulator() for s in sites}
    thresholds = {s: outlier_threshold(saes[s]) for s in sites}
    seen_recon = seen_ce = 0  # real tokens of the batches read so far (outliers included)
    for j, batch in enumerate(batches):
        if seen_recon >= eval_tokens and seen_ce >= ce_tokens:
            break
        real = batch.real
        n_real = int(real.sum())
        mine = j % par.world == par.rank
        if seen_recon < eval_tokens and mine:
            acts = batch_activations(loaded, sites, batch)
            for s in sites:
                rows = acts[s][real.to(acts[s].device)]
                keep = non_outliers(rows, thresholds[s])
                x, target = saes[s].cfg.split_rows(rows[keep])
                latents = saes[s].encode(x)
                recon[s].update(target, latents, saes[s].decode(latents), n_outliers=int((~keep).sum()))
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
    asked = {"eval_tokens_requested": eval_tokens, "eval_tokens_available": min(seen_recon, eval_tokens),
             "ce_tokens_requested": ce_tokens, "ce_tokens_available": min(seen_ce, ce_tokens)}
    results: dict[Site, dict[str, Any]] = {}
    for s in sites:
        results[s] = {**recon[s].result(), **(ce[s].result() if ce[s].n else {}), **asked}
    return results


def _ce_batch(
    loaded: LoadedModel,
    saes: dict[Site, SAE],
    thresholds: dict[Site, float | None],
    batch: TokenBatch,
    ce: dict[Site, CEAccumulator],
) -> None:
    """One batch of clean, SAE-spliced and zero-ablated forward passes for every site.

    The spliced passes rerun only the layers from the site's on (`LayerReplay`), unless replaying does
    not reproduce the model's own logits, in which case they are full forward passes.
    """
    model = loaded.model
    device = module_device(model)
    ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
    target_mask = batch.real.to(device).float()
    replay = LayerReplay(model, loaded.layout, ids, attn)

    def logits_from(site: Site) -> Tensor:
        return replay.from_layer(site.layer) if replay.exact else model(input_ids=ids, attention_mask=attn).logits

    logp_clean, nll_clean = next_token_loss(replay.logits, ids, target_mask)
    n = float(target_mask[:, 1:].sum())
    for s, sae in saes.items():
        with splice(model, s, _splice_fn(s, batch.real, thresholds[s], sae), layout=loaded.layout):
            logp_sae, nll_sae = next_token_loss(logits_from(s), ids, target_mask)
        ablate = _splice_fn(s, batch.real, thresholds[s], lambda src, d=sae.cfg.out_dim: src.new_zeros(*src.shape[:-1], d))
        with splice(model, s, ablate, layout=loaded.layout):
            logp_abl, nll_abl = next_token_loss(logits_from(s), ids, target_mask)
        acc = ce[s]
        acc.n += n
        acc.clean += float(nll_clean.sum())
        acc.sae += float(nll_sae.sum())
        acc.ablated += float(nll_abl.sum())
        acc.delta_sq += float((nll_sae - nll_clean).double().pow(2).sum())
        acc.kl += float(kl_sum(logp_clean, logp_sae, target_mask))
        acc.kl_ablated += float(kl_sum(logp_clean, logp_abl, target_mask))

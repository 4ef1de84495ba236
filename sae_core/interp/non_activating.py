"""Contexts on which a feature does not fire, checked by running the model and the SAE on them.

The feature file keeps only where features fire, so a window picked at random might still fire a dense
feature. A pool of windows from the file's own contexts (held-out text) is run once through the model
and every SAE of the run; a window counts as non-activating for a feature only if the feature is zero on
all its counted tokens (real text, not an outlier), as in precompute.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..activations.outliers import non_outliers, outlier_threshold
from ..model.hooks import run_to_sites
from ..runs.open_run import RunSAEs
from ..text.tokens import real_token_mask, special_token_ids
from .samples import NON_ACTIVATING, Context


@dataclass(frozen=True)
class WindowPool:
    """Windows of the feature file's contexts and, for the features asked about, where each one fires."""

    context_ids: list[int]
    """(W,) the context of each window."""
    tokens: list[list[str]]
    """(W, width) each window's tokens as text."""
    counted: Tensor
    """(W, width) bool: real text tokens (the ones a fuzzing prompt may mark)."""
    fires: dict[tuple[str, int], Tensor]
    """(SAE short name, feature) → (W,) bool: whether the feature fires anywhere in the window."""

    def for_feature(self, sae: str, feature: int, n: int, *, avoid: set[int] = frozenset(), seed: int = 0) -> list[Context]:
        """Up to `n` windows where the feature never fires, in a random order fixed by `seed`, outside the contexts `avoid`."""
        if n <= 0:
            return []
        quiet = ~self.fires[(sae, feature)]
        order = np.random.default_rng([seed, zlib.crc32(sae.encode()), feature]).permutation(len(self.context_ids))
        out = []
        for w in order:
            if quiet[w] and self.context_ids[w] not in avoid:
                width = len(self.tokens[w])
                out.append(Context(self.tokens[w], [0.0] * width, NON_ACTIVATING, self.context_ids[w], self.counted[w].tolist()))
                if len(out) == n:
                    break
        return out


@torch.no_grad()
def build_pool(
    opened: RunSAEs,
    contexts: dict[int, list[int]],
    vocab: list[str],
    wanted: dict[str, list[int]],
    *,
    per_context: int,
    half_width: int,
    seed: int = 0,
    batch_size: int = 8,
) -> WindowPool:
    """Windows of ±`half_width` tokens, `per_context` from each of `contexts` (context id → token ids), with where
    each `wanted` feature (SAE short name → features) fires on them."""
    loaded = opened.loaded
    sites = {site.short: site for site in opened.saes if site.short in wanted}
    device = loaded.device
    specials = special_token_ids(loaded.tokenizer)
    rng = np.random.default_rng(seed)
    width = 2 * half_width + 1
    ids_list = sorted(contexts)
    window_ctx: list[int] = []
    window_start: list[int] = []
    for cid in ids_list:
        T = len(contexts[cid])
        if T < width + 1:
            continue
        bounds = np.linspace(1, T - width + 1, per_context + 1).astype(int)  # one window per segment, after position 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            window_ctx.append(cid)
            window_start.append(int(rng.integers(lo, max(hi, lo + 1))))
    fires_all: dict[str, list[Tensor]] = {s: [] for s in sites}
    real_all: list[Tensor] = []
    starts = torch.tensor(window_start, dtype=torch.long)
    index = {c: i for i, c in enumerate(ids_list)}
    ctx_of_window = torch.tensor([index[c] for c in window_ctx], dtype=torch.long)
    for b in range(0, len(ids_list), batch_size):
        chunk = ids_list[b : b + batch_size]
        ids = torch.tensor([contexts[c] for c in chunk], dtype=torch.long)
        real = real_token_mask(ids, specials)
        acts = run_to_sites(loaded.model, ids.to(device), sites=list(sites.values()), layout=loaded.layout)
        in_chunk = (ctx_of_window >= b) & (ctx_of_window < b + len(chunk))
        rows = ctx_of_window[in_chunk] - b
        positions = starts[in_chunk, None] + torch.arange(width)
        real_all.append(real[rows[:, None], positions])
        for short, site in sites.items():
            sae = opened.saes[site]
            x = acts[site]
            counted = (real.to(device) & non_outliers(x, outlier_threshold(sae))).cpu()
            f = torch.tensor(wanted[short], dtype=torch.long, device=device)
            a = sae.encode(x)[..., f].cpu() * counted[..., None]  # (B, T, n_wanted)
            window_acts = a[rows[:, None], positions]  # (w, width, n_wanted)
            fires_all[short].append(window_acts.amax(dim=1) > 0)
    tokens = [[vocab[t] for t in contexts[c][s : s + width]] for c, s in zip(window_ctx, window_start)]
    fires = {}
    for short in sites:
        matrix = torch.cat(fires_all[short]) if fires_all[short] else torch.zeros(0, len(wanted[short]), dtype=torch.bool)
        for j, feature in enumerate(wanted[short]):
            fires[(short, feature)] = matrix[:, j]
    counted = torch.cat(real_all) if real_all else torch.zeros(0, width, dtype=torch.bool)
    return WindowPool(window_ctx, tokens, counted, fires)

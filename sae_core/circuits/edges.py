"""Edges of a sparse feature circuit: how much of a downstream node's effect on the metric flows from each upstream
node, directly (Marks et al. 2024, attribution patching of edges).

    weight(u → d) = ∂m/∂d · ∂d/∂u · (u_clean − u_patch)

`∂d/∂u` is the direct derivative: every SAE site before d's site is held at its clean nodes (`decode(f) + e`,
each node a leaf), so a path from u to d that crosses another spliced site counts as an edge through that
site's nodes instead. Each downstream node needs its own backward pass; `chunk` of them run as one batch of
that many copies of the prompt, so memory grows with `chunk` (one forward and backward of a batch of `chunk`
prompts, up to the downstream site's layer), not with the number of edges.

With positions summed over, a downstream node is `Σ_t g_t · d_t` and an upstream node's weight is summed over its
positions too: the sum of the per-position edges between the two features.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..interventions.prompt_activations import PromptTokens
from ..model.hooks import StopForward, splice
from ..model.load import LoadedModel
from ..model.sites import Site
from ..saes import SAE
from .nodes import ALL_POSITIONS, NodeEffects, SiteMeans, _patch, split_site

EDGE_COLUMNS = ["up_site", "up_position", "up_feature", "down_site", "down_position", "down_feature", "weight"]
"""One row per edge; a feature of -1 is the site's error term."""


class _Reached(StopForward):
    """Raised once the downstream site is computed: the layers after it are not needed."""


def edge_weights(
    loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, effects: NodeEffects,
    downstream: pd.DataFrame, *, means: dict[Site, SiteMeans] | None = None, chunk: int = 8,
    upstream: pd.DataFrame | None = None, sum_positions: bool = False,
) -> pd.DataFrame:
    """The weight of every edge into the `downstream` nodes (rows with `site`, `position`, `feature`, as
    `ranked_nodes` gives them) from the nodes of every earlier site (only those in `upstream`, when given); with
    `sum_positions`, upstream nodes are summed over positions (position `ALL_POSITIONS`)."""
    order = sorted(saes, key=lambda s: s.order_key)
    by_short = {s.short: s for s in saes}
    clean = {site: (nodes.activations, nodes.errors) for site, nodes in effects.sites.items()}
    patches = {site: _patch(clean[site], (means or {}).get(site)) for site in saes}
    wanted_up = None if upstream is None else set(zip(upstream["site"], upstream["position"], upstream["feature"]))
    rows: list[tuple] = []
    groups = list(downstream.groupby("site", sort=False))
    progress = tqdm(total=len(downstream), desc="edges", unit="node", file=sys.stderr, leave=False)
    for short, nodes in groups:
        site = by_short[str(short)]
        earlier = [s for s in order if s.order_key < site.order_key]
        if not earlier:
            progress.update(len(nodes))
            continue
        for start in range(0, len(nodes), chunk):
            part = nodes.iloc[start : start + chunk]
            grads = _direct_grads(loaded, saes, prompt, effects, site, earlier, part, clean)
            for c, node in enumerate(part.itertuples()):
                for up in earlier:
                    if up not in grads:  # no direct path: every route from it crosses a later held site
                        continue
                    (f, e), (pf, pe) = clean[up], patches[up]
                    gf, ge = grads[up]
                    weights = torch.cat([((e - pe) * ge[c]).sum(-1, keepdim=True), (f - pf) * gf[c]], dim=1)
                    if sum_positions:
                        weights = weights.sum(0, keepdim=True)
                    for p, j in weights.nonzero().tolist():
                        key = (up.short, ALL_POSITIONS if sum_positions else p, j - 1)
                        if wanted_up is None or key in wanted_up:
                            rows.append((*key, node.site, int(node.position), int(node.feature), float(weights[p, j])))
            progress.update(len(part))
    progress.close()
    return pd.DataFrame(rows, columns=EDGE_COLUMNS)


def _direct_grads(
    loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, effects: NodeEffects, site: Site,
    earlier: list[Site], nodes: pd.DataFrame, clean: dict[Site, tuple[Tensor, Tensor]],
) -> dict[Site, tuple[Tensor, Tensor]]:
    """For each downstream node c of `nodes` at `site`: `∂(g_c · value_c)/∂(f, e)` of every earlier site with a direct
    path to it, as `(C, T, d_sae)` and `(C, T, d_in)`, with `g_c` = ∂m/∂(node c) and every earlier site held at its
    clean nodes (a site whose every route crosses another held site is left out). A node at `ALL_POSITIONS` reads
    the sum over positions."""
    n = len(nodes)
    real = prompt.real.to(loaded.device)
    leaves = {up: (clean[up][0].expand(n, -1, -1).clone().requires_grad_(True),
                   clean[up][1].expand(n, -1, -1).clone().requires_grad_(True)) for up in earlier}
    target = effects.sites[site]
    positions = torch.tensor(nodes["position"].tolist(), dtype=torch.long)
    features = torch.tensor(nodes["feature"].tolist(), dtype=torch.long)
    at = torch.zeros(n, len(prompt.ids), device=loaded.device)  # (C, T): the positions each node reads
    at[positions < 0] = 1.0
    at[torch.nonzero(positions >= 0).flatten(), positions[positions >= 0]] = 1.0
    scalar: list[Tensor] = []

    def held(up: Site) -> Callable[[Tensor, Tensor], Tensor]:
        def fn(x: Tensor, source: Tensor) -> Tensor:
            f, e = leaves[up]
            return (saes[up].decode(f) + e).to(x.dtype)
        return fn

    def read(x: Tensor, source: Tensor) -> Tensor:
        f, e = split_site(saes[site], x, real, source)  # (C, T, d_sae), (C, T, d_out): copy c serves node c
        copies = torch.arange(n)
        is_error = features < 0
        values = torch.zeros(n, device=x.device)
        if (~is_error).any():
            fc = f[copies[~is_error], :, features[~is_error]]  # (C_f, T)
            gc = target.feature_grads[:, features[~is_error]].T.to(fc)
            values[~is_error] = (fc * gc * at[~is_error]).sum(-1)
        if is_error.any():
            ec = (e[copies[is_error]] * target.error_grads.to(e)).sum(-1)  # (C_e, T)
            values[is_error] = (ec * at[is_error]).sum(-1)
        scalar.append(values.sum())
        raise _Reached

    with torch.enable_grad(), ExitStack() as stack:
        for up in earlier:
            stack.enter_context(splice(loaded.model, up, held(up), layout=loaded.layout))
        stack.enter_context(splice(loaded.model, site, read, layout=loaded.layout))
        try:
            loaded.layout.base_model(input_ids=prompt.ids[None].expand(n, -1).to(loaded.device), use_cache=False)
        except _Reached:
            pass
        scalar[0].backward()
    return {up: (leaves[up][0].grad, leaves[up][1].grad) for up in earlier  # type: ignore[misc]
            if leaves[up][0].grad is not None and leaves[up][1].grad is not None}

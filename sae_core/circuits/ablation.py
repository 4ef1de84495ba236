"""Is a circuit the model's answer? The metric with only the circuit's nodes left (faithfulness) and with only them
removed (completeness), as Marks et al. 2024 measure it.

Nodes outside what is kept are ablated (to zero, or to their means); kept features and error terms are computed
live, from whatever the ablated upstream sites now send them. Keeping every node leaves the model exactly as it
was (each site's output is `decode(f) + e = x`), so the whole graph's faithfulness is 1 by construction, and
removing every node gives the baseline `m(∅)`:

    faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))        completeness(C) = faithfulness(M \\ C)

A complete circuit leaves nothing behind: its complement's faithfulness is near 0.

Nodes may be kept per position or summed over positions (`ALL_POSITIONS`: one node per site and feature, kept or
removed at every position at once), as Marks et al. do for circuits that hold across prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from ..interventions.attribution import Target, spliced_logits
from ..interventions.prompt_activations import PromptTokens
from ..model.load import LoadedModel
from ..model.sites import Site
from ..saes import SAE
from .nodes import ALL_POSITIONS, NodeEffects, SiteMeans, _patch, check_request, split_site

Keep = dict[Site, tuple[Tensor, Tensor]]
"""Per site: which features `(T, d_sae)` and which error terms `(T,)` are kept (bool); a missing site keeps none."""


@torch.no_grad()
def circuit_metric(loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, target: Target, keep: Keep,
                   means: dict[Site, SiteMeans] | None = None) -> float:
    """The metric with every node outside `keep` ablated (to zero, or to `means`) and the kept ones computed live."""
    check_request(loaded, saes, prompt, target)
    real = prompt.real.to(loaded.device)

    def fn_for(site: Site, sae: SAE) -> Callable[[Tensor, Tensor], Tensor]:
        def fn(x: Tensor, source: Tensor) -> Tensor:
            f, e = split_site(sae, x[0], real, source[0])
            kept_f, kept_e = keep.get(site, (torch.zeros_like(f, dtype=torch.bool), torch.zeros(len(f), dtype=torch.bool)))
            pf, pe = _patch((f, e), (means or {}).get(site))
            f = torch.where(kept_f.to(f.device), f, pf)
            e = torch.where(kept_e.to(e.device)[:, None], e, pe)
            return (sae.decode(f) + e)[None]
        return fn

    return float(target.value(spliced_logits(loaded, prompt, {site: fn_for(site, sae) for site, sae in saes.items()})))


def ranked_nodes(effects: NodeEffects, sum_positions: bool = False) -> pd.DataFrame:
    """Every node with its effect, largest |effect| first: `site`, `position`, `feature` (-1: the error term), `effect`;
    with `sum_positions`, one node per site and feature, its effects summed over positions (position `ALL_POSITIONS`)."""
    frames = []
    for site, nodes in effects.sites.items():
        t, d = nodes.feature_effects.shape
        positions = torch.arange(t).repeat_interleave(d + 1)
        features = torch.arange(-1, d).repeat(t)
        values = torch.cat([nodes.error_effects[:, None], nodes.feature_effects], dim=1).flatten()
        frames.append(pd.DataFrame({"site": site.short, "position": positions.numpy(), "feature": features.numpy(),
                                    "effect": values.cpu().numpy()}))
    table = pd.concat(frames, ignore_index=True)
    if sum_positions:
        table = table.groupby(["site", "feature"], as_index=False, sort=False)["effect"].sum()
        table.insert(1, "position", ALL_POSITIONS)
    order = table["effect"].abs().sort_values(ascending=False, kind="stable").index
    return table.loc[order].reset_index(drop=True)


def keep_nodes(effects: NodeEffects, nodes: pd.DataFrame) -> Keep:
    """The `Keep` masks of the nodes listed (rows of `ranked_nodes`, per position or summed over them), for every site
    (none kept where none is listed)."""
    keep = {site: (torch.zeros(n.feature_effects.shape, dtype=torch.bool), torch.zeros(len(n.error_effects), dtype=torch.bool))
            for site, n in effects.sites.items()}
    by_short = {site.short: site for site in effects.sites}
    for short, rows in nodes.groupby("site"):
        _mark(*keep[by_short[str(short)]], rows["position"].tolist(), rows["feature"].tolist(), True)
    return keep


def _mark(kept_f: Tensor, kept_e: Tensor, positions: list[int], features: list[int], value: bool) -> None:
    """Set the entries of the nodes `(positions[i], features[i])` in a site's masks (feature -1: the error term;
    position `ALL_POSITIONS`: every position)."""
    position = torch.tensor(positions, dtype=torch.long)
    feature = torch.tensor(features, dtype=torch.long)
    every, error = position == ALL_POSITIONS, feature < 0
    kept_e[position[~every & error]] = value
    kept_f[position[~every & ~error], feature[~every & ~error]] = value
    kept_f[:, feature[every & ~error]] = value
    if bool((every & error).any()):
        kept_e[:] = value


def keep_all_but(saes: dict[Site, SAE], n_tokens: int, removed: Iterable[tuple[Site, int, int]]) -> Keep:
    """Every node of every site kept but the `removed` `(site, position, feature)` ones (feature -1: the error term;
    position `ALL_POSITIONS`: at every position)."""
    keep = {site: (torch.ones(n_tokens, sae.cfg.d_sae, dtype=torch.bool), torch.ones(n_tokens, dtype=torch.bool))
            for site, sae in saes.items()}
    for site, position, feature in removed:
        _mark(*keep[site], [position], [feature], False)
    return keep


def faithfulness_curve(loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, target: Target,
                       effects: NodeEffects, sizes: Sequence[int], means: dict[Site, SiteMeans] | None = None,
                       sum_positions: bool = False) -> pd.DataFrame:
    """Faithfulness and completeness of the circuits made of the n nodes of largest |effect| (per position, or summed
    over positions), for each n in `sizes`: columns `nodes`, `metric_circuit`, `faithfulness`, `metric_without`,
    `completeness` (NaN when m(M) = m(∅))."""
    ranked = ranked_nodes(effects, sum_positions)
    empty = circuit_metric(loaded, saes, prompt, target, {}, means)
    span = effects.value - empty
    rows = []
    for n in sizes:
        chosen = keep_nodes(effects, ranked.head(n))
        complement = {site: (~kept_f, ~kept_e) for site, (kept_f, kept_e) in chosen.items()}
        with_circuit = circuit_metric(loaded, saes, prompt, target, chosen, means)
        without = circuit_metric(loaded, saes, prompt, target, complement, means)
        rows.append({"nodes": int(min(n, len(ranked))), "metric_circuit": with_circuit,
                     "faithfulness": (with_circuit - empty) / span if span else float("nan"),
                     "metric_without": without, "completeness": (without - empty) / span if span else float("nan")})
    return pd.DataFrame(rows)

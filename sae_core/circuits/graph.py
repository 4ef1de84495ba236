"""A circuit for one prompt and target, end to end: node effects, the nodes kept, the edges between them, the
faithfulness curve, as one JSON-ready graph (what `sae-explorer circuit` writes and the app draws)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from ..interventions.attribution import Target
from ..interventions.prompt_activations import PromptTokens
from ..model.load import LoadedModel
from ..model.sites import Site
from ..options import device_option, option
from ..saes import SAE
from .ablation import faithfulness_curve, ranked_nodes
from .edges import edge_weights
from .nodes import ALL_POSITIONS, METHODS, CircuitError, SiteMeans, node_effects

GRAPH_VERSION = 1
POSITIONS = ("keep", "sum")


@dataclass(frozen=True)
class CircuitOptions:
    """How a circuit is found and pruned (`sae-explorer circuit`, the Circuits page)."""

    method: str = option("atp", "node effects by attribution patching (atp: one backward pass) or integrated "
                         "gradients (ig: --ig-steps passes per site, exact in sum)", choices=METHODS)
    ig_steps: int = option(10, "steps of integrated gradients along the path from ablated to clean")
    ablate_to: str = option("mean", "what a removed node becomes: its mean over --mean-tokens of the run's held-out "
                            "text, or zero", choices=("mean", "zero"))
    mean_tokens: int = option(4096, "reference tokens the means are taken over", count=True)
    positions: str = option("keep", "keep one node per feature and token position, or sum each feature's nodes over "
                            "the positions (one node per site and feature, as Marks et al. do)", choices=POSITIONS)
    max_nodes: int = option(40, "keep at most this many nodes, largest |effect| first")
    node_threshold: float = option(0.0, "and only nodes whose |effect| is at least this (in units of the metric)")
    edge_threshold: float = option(0.0, "keep the edges whose |weight| is at least this")
    max_edges: int = option(200, "keep at most this many edges, largest |weight| first")
    chunk: int = option(8, "downstream nodes per backward pass when computing edges: memory grows with it")
    curve_points: int = option(8, "circuit sizes on the faithfulness / completeness curve")


@dataclass(frozen=True)
class CircuitRequest:
    """What `sae-explorer circuit` explains: a prompt, a target token at a position, and where the graph goes."""

    prompt: str = option(None, "the text whose prediction is explained", required=True)
    target: str = option("", "the token whose logit is the metric, as text with its leading space (\" Paris\") or "
                         "#ID (default: the model's top prediction)")
    minus: str = option("", "a second token: the metric becomes logit(target) − logit(minus), e.g. \" is\" vs \" are\"")
    position: int = option(-1, "the position whose next-token prediction is explained (negative: from the end)")
    chat: bool = option(False, "wrap the prompt in the model's chat template as a user message")
    out: str = option("", "the graph's JSON file (default: RUN/circuits/circuit-<time>.json)")
    device: str = device_option()


def pruned_nodes(ranked: pd.DataFrame, options: CircuitOptions) -> pd.DataFrame:
    """The nodes kept: the `max_nodes` largest by |effect| among those at or above `node_threshold`."""
    kept = ranked[ranked["effect"].abs() >= options.node_threshold]
    return kept[kept["effect"] != 0].head(options.max_nodes).reset_index(drop=True)


def pruned_edges(edges: pd.DataFrame, options: CircuitOptions) -> pd.DataFrame:
    """The edges kept: the `max_edges` largest by |weight| among those at or above `edge_threshold`."""
    kept = edges[edges["weight"].abs() >= options.edge_threshold]
    order = kept["weight"].abs().sort_values(ascending=False, kind="stable").index
    return kept.loc[order].head(options.max_edges).reset_index(drop=True)


def curve_sizes(total: int, points: int) -> list[int]:
    """`points` circuit sizes from 1 to `total`, spaced evenly on a log scale."""
    if total <= 0:
        return [0]
    sizes = {max(1, round(total ** (i / max(1, points - 1)))) for i in range(points)}
    return sorted(sizes | {total})


def label_nodes(nodes: list[dict[str, Any]], labels: Callable[[str, list[int]], dict[int, str]]) -> None:
    """Fill each feature node's `label` from `labels(site, features)` (e.g. `FeatureStore.describe`), one call per site."""
    for site in {n["site"] for n in nodes}:
        features = [n for n in nodes if n["site"] == site and not n["error"]]
        if not features:
            continue
        named = labels(site, [n["feature"] for n in features])
        for n in features:
            n["label"] = named.get(n["feature"])


def find_circuit(
    loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, target: Target, options: CircuitOptions, *,
    means: dict[Site, SiteMeans] | None = None, labels: Callable[[str, list[int]], dict[int, str]] | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict[str, Any]:
    """The circuit of `target` on `prompt` as a graph: settings, tokens, metric, nodes, edges and the faithfulness
    curve over the ranked nodes (see `sae_core.circuits`)."""
    if options.ig_steps < 1 or options.max_nodes < 1 or options.chunk < 1:
        raise CircuitError("--ig-steps, --max-nodes and --chunk must be at least 1")
    if options.positions not in POSITIONS:
        raise CircuitError(f"positions {options.positions!r}: choose one of {', '.join(POSITIONS)}")
    summed = options.positions == "sum"
    effects = node_effects(loaded, saes, prompt, target, method=options.method, steps=options.ig_steps, means=means)
    ranked = ranked_nodes(effects, summed)
    nodes = pruned_nodes(ranked, options)
    log(f"metric {effects.value:.4f}; {len(ranked):,} nodes scored, {len(nodes)} kept")
    edges = pruned_edges(edge_weights(loaded, saes, prompt, effects, nodes, means=means, chunk=options.chunk,
                                      upstream=nodes, sum_positions=summed), options)
    curve = faithfulness_curve(loaded, saes, prompt, target, effects, curve_sizes(len(nodes), options.curve_points),
                               means, summed)
    by_short = {s.short: s for s in saes}
    node_rows = []
    for row in nodes.itertuples():
        site = by_short[row.site]
        sn = effects.sites[site]
        error = row.feature < 0
        at = slice(None) if row.position == ALL_POSITIONS else slice(row.position, row.position + 1)
        node_rows.append({
            "id": f"{row.site}/{'all' if summed else row.position}/{'error' if error else row.feature}", "site": row.site,
            "layer": site.layer, "kind": site.kind, "position": int(row.position),
            "token": "(all positions)" if summed else prompt.tokens[row.position],
            "feature": None if error else int(row.feature), "error": bool(error), "effect": float(row.effect),
            # summed over positions: the largest activation (or error norm) over the positions
            "activation": None if error else float(sn.activations[at, row.feature].max()),
            "error_norm": float(sn.errors[at].norm(dim=-1).max()) if error else None,
            "label": None,
        })
    if labels is not None:
        label_nodes(node_rows, labels)
    ids = {(n["site"], n["position"], -1 if n["error"] else n["feature"]): n["id"] for n in node_rows}
    edge_rows = [{"source": ids[(e.up_site, e.up_position, e.up_feature)], "target": ids[(e.down_site, e.down_position, e.down_feature)],
                  "weight": float(e.weight)} for e in edges.itertuples()]
    return {
        "version": GRAPH_VERSION, "settings": asdict(options), "tokens": prompt.tokens,
        "target": {"position": target.position, "token": target.token, "minus_token": target.minus_token},
        "metric": effects.value, "sites": [s.short for s in sorted(saes, key=lambda s: s.order_key)],
        "nodes": node_rows, "edges": edge_rows, "curve": curve.to_dict("records"),
    }

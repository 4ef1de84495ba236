"""Sparse feature circuits on the tiny model with its own SAEs: node effects against finite differences, integrated
gradients' completeness, the whole graph's faithfulness, error nodes to first order, and clear errors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sae_core.circuits import (
    EDGE_COLUMNS,
    CircuitError,
    SiteMeans,
    circuit_metric,
    faithfulness_curve,
    keep_nodes,
    node_effects,
    ranked_nodes,
)
from sae_core.circuits.nodes import split_site
from sae_core.interventions.attribution import Target, spliced_logits
from sae_core.interventions.prompt_activations import PromptTokens, tokenize_prompt
from sae_core.model.sites import parse_site
from sae_core.runs.open_run import open_run_saes

TEXT = "the river city music science history ocean language learning light"


@pytest.fixture(scope="module")
def setup(precomputed_run, tiny_loaded):
    opened = open_run_saes(precomputed_run, loaded=tiny_loaded, log=lambda m: None)
    prompt = tokenize_prompt(opened.loaded, TEXT)
    last = len(prompt.ids) - 1
    return opened.loaded, opened.saes, prompt, Target(position=last, token=int(prompt.ids[last]), minus_token=7)


def metric_with(loaded, saes, prompt, target, change) -> float:
    """The metric with each site's nodes `(f, e)` replaced by `change(site, f, e)` (the rest of the model live)."""
    real = prompt.real.to(loaded.device)

    def fn_for(site, sae):
        def fn(x, source):
            f, e = split_site(sae, x[0], real, source[0])
            f, e = change(site, f.clone(), e.clone())
            return (sae.decode(f) + e)[None]
        return fn

    with torch.no_grad():
        return float(target.value(spliced_logits(loaded, prompt, {s: fn_for(s, sae) for s, sae in saes.items()})))


def test_splicing_every_site_with_its_error_term_leaves_the_metric_unchanged(setup):
    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    with torch.no_grad():
        plain = float(target.value(spliced_logits(loaded, prompt, {})))
    assert effects.value == pytest.approx(plain, abs=1e-5)
    assert metric_with(loaded, saes, prompt, target, lambda s, f, e: (f, e)) == pytest.approx(plain, abs=1e-4)
    assert len(saes) >= 2 and set(effects.sites) == set(saes)


def test_attribution_patching_equals_finite_differences_node_by_node(setup):
    """Shrinking one node by ε changes the metric by −ε · its effect, to first order (checked for the 6 strongest
    feature nodes, spread over sites, and every site's strongest error node); tolerance 3% + 1e-4."""
    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    ranked = ranked_nodes(effects)
    by_short = {s.short: s for s in saes}
    chosen = [*ranked[ranked.feature >= 0].head(6).itertuples(),
              *ranked[ranked.feature < 0].groupby("site").head(1).itertuples()]
    eps = 1e-3
    base = metric_with(loaded, saes, prompt, target, lambda s, f, e: (f, e))
    for node in chosen:
        site = by_short[node.site]

        def shrink(s, f, e, node=node, site=site):
            if s == site:
                if node.feature >= 0:
                    f[node.position, node.feature] *= 1 - eps
                else:
                    e[node.position] *= 1 - eps
            return f, e

        change = metric_with(loaded, saes, prompt, target, shrink) - base
        assert change == pytest.approx(-eps * node.effect, rel=0.03, abs=1e-4 * eps + 1e-6), node


def test_integrated_gradients_sum_to_the_change_from_patching_the_whole_site(setup):
    """The completeness axiom, per site, with mean ablation and (but at residual sites) zero ablation: 64 steps,
    within 1%. Zeroing a whole residual stream is left out: the path then passes near the origin, where the next
    norm's 1/RMS explodes, and no step count converges (measured: 8, 64, 256 steps give −0.08, −0.30, −0.12 for
    a change of −0.19)."""
    loaded, saes, prompt, target = setup
    other = tokenize_prompt(loaded, "history of science and the ocean light")
    from sae_core.circuits.nodes import clean_nodes

    means = {site: SiteMeans(f.mean(0), e.mean(0)) for site, (f, e) in clean_nodes(loaded, saes, other).items()}
    for patch in (None, means):
        effects = node_effects(loaded, saes, prompt, target, method="ig", steps=64, means=patch)
        for site, nodes in effects.sites.items():
            if patch is None and site.kind == "resid_post":
                continue
            total = float(nodes.feature_effects.sum() + nodes.error_effects.sum())

            def ablate_site(s, f, e, site=site, patch=patch):
                if s != site:
                    return f, e
                if patch is None:
                    return torch.zeros_like(f), torch.zeros_like(e)
                return patch[s].features.expand_as(f).clone(), patch[s].error.expand_as(e).clone()

            patched = metric_with(loaded, saes, prompt, target, ablate_site)
            assert total == pytest.approx(effects.value - patched, rel=0.01, abs=1e-3), (site, patch is None)


def test_the_whole_graph_is_faithful_and_leaves_nothing_behind(setup):
    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    n_all = len(ranked_nodes(effects))
    curve = faithfulness_curve(loaded, saes, prompt, target, effects, [0, 5, n_all])
    assert curve.faithfulness.iloc[-1] == pytest.approx(1.0, abs=1e-4)
    assert curve.completeness.iloc[-1] == pytest.approx(0.0, abs=1e-6)  # its complement is the empty circuit
    assert curve.faithfulness.iloc[0] == pytest.approx(0.0, abs=1e-6)  # no node kept: the empty circuit itself
    assert curve.completeness.iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert list(curve.nodes) == [0, 5, n_all]


def test_ablating_the_error_nodes_moves_the_metric_as_their_effects_predict(setup):
    """All error terms shrunk together by ε: the change is −ε · the sum of their effects (first order)."""
    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    predicted = sum(float(n.error_effects.sum()) for n in effects.sites.values())
    eps = 1e-3
    base = metric_with(loaded, saes, prompt, target, lambda s, f, e: (f, e))
    change = metric_with(loaded, saes, prompt, target, lambda s, f, e: (f, e * (1 - eps))) - base
    assert abs(predicted) > 1e-3
    assert change == pytest.approx(-eps * predicted, rel=0.03, abs=1e-6)


def test_nodes_rank_by_absolute_effect_and_keep_masks_round_trip(setup):
    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    ranked = ranked_nodes(effects)
    assert ranked.effect.abs().is_monotonic_decreasing
    keep = keep_nodes(effects, ranked.head(10))
    assert sum(int(f.sum() + e.sum()) for f, e in keep.values()) == 10
    kept_all = keep_nodes(effects, ranked)
    assert circuit_metric(loaded, saes, prompt, target, kept_all) == pytest.approx(effects.value, abs=1e-4)


def test_bad_requests_are_clear_errors(setup):
    loaded, saes, prompt, target = setup
    with pytest.raises(CircuitError, match="no SAEs to build a circuit from"):
        node_effects(loaded, {}, prompt, target)
    empty = PromptTokens(torch.zeros(0, dtype=torch.long), [], torch.zeros(0, dtype=torch.bool), None)
    with pytest.raises(CircuitError, match="the prompt is empty"):
        node_effects(loaded, saes, empty, target)
    with pytest.raises(CircuitError, match="outside the prompt"):
        node_effects(loaded, saes, prompt, Target(position=999, token=1))
    with pytest.raises(CircuitError, match="outside the vocabulary"):
        node_effects(loaded, saes, prompt, Target(position=0, token=10**7))
    with pytest.raises(CircuitError, match="choose one of atp, ig"):
        node_effects(loaded, saes, prompt, target, method="exact")
    with pytest.raises(CircuitError, match="at least 1"):
        node_effects(loaded, saes, prompt, target, method="ig", steps=0)


def _downstream_nodes(loaded, saes, prompt, site, held):
    """`(f, e)` of `site` with every earlier site's output made of the nodes `held[s] = (f, e)`."""
    from contextlib import ExitStack

    from sae_core.model.hooks import splice

    real = prompt.real.to(loaded.device)
    out = {}

    def hold(s):
        return lambda x, source: (saes[s].decode(held[s][0]) + held[s][1])[None]

    def read(x, source):
        out["nodes"] = split_site(saes[site], x[0], real, source[0])
        return x

    with torch.no_grad(), ExitStack() as stack:
        for s in held:
            stack.enter_context(splice(loaded.model, s, hold(s), layout=loaded.layout))
        stack.enter_context(splice(loaded.model, site, read, layout=loaded.layout))
        loaded.model(input_ids=prompt.ids[None])
    return out["nodes"]


@pytest.mark.parametrize(("down", "up_sites"), [("L1T", {"L0R", "L1A"}), ("L1M", {"L1T"})])
def test_edge_weights_equal_brute_force_finite_differences(setup, down, up_sites):
    """Shrink an upstream node by ε with every earlier site held at its clean nodes, read the downstream node:
    g_d · Δd = −ε · weight, to first order (the 8 heaviest edges into the site's 4 strongest nodes, one of
    them its strongest error node; tolerance 3% + 1e-6). Into the transcoder L1T (features read from the MLP's input)
    from both earlier sites; into L1M (the MLP output L1T writes) from L1T only: held at its nodes, the transcoder
    carries every route from the sites before it."""
    from sae_core.circuits import edge_weights

    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    ranked = ranked_nodes(effects)
    last = parse_site(down)
    at_last = ranked[ranked.site == last.short]
    downstream = pd.concat([at_last[at_last.feature >= 0].head(3), at_last[at_last.feature < 0].head(1)])
    edges = edge_weights(loaded, saes, prompt, effects, downstream, chunk=3)
    assert set(edges.columns) == set(EDGE_COLUMNS) and len(edges) > 0
    assert set(edges.up_site) == up_sites
    earlier = [s for s in saes if s.order_key < last.order_key]
    clean = {s: (effects.sites[s].activations, effects.sites[s].errors) for s in earlier}
    base_f, base_e = _downstream_nodes(loaded, saes, prompt, last, clean)
    by_short = {s.short: s for s in saes}
    heaviest = edges.reindex(edges.weight.abs().sort_values(ascending=False).index).head(8)
    for edge in heaviest.itertuples():
        up = by_short[edge.up_site]
        for eps in (1e-3, 1e-4, 1e-5):  # smaller steps until no downstream JumpReLU latent jumps across its threshold
            f, e = (t.clone() for t in clean[up])
            if edge.up_feature >= 0:
                f[edge.up_position, edge.up_feature] *= 1 - eps
            else:
                e[edge.up_position] *= 1 - eps
            new_f, new_e = _downstream_nodes(loaded, saes, prompt, last, {**clean, up: (f, e)})
            if bool(((new_f > 0) == (base_f > 0)).all()):
                break
        nodes = effects.sites[last]
        if edge.down_feature >= 0:
            moved = float((new_f - base_f)[edge.down_position, edge.down_feature]
                          * nodes.feature_grads[edge.down_position, edge.down_feature])
        else:
            moved = float(((new_e - base_e)[edge.down_position] * nodes.error_grads[edge.down_position]).sum())
        assert moved == pytest.approx(-eps * edge.weight, rel=0.03, abs=1e-6), edge


def test_edges_in_chunks_equal_edges_one_at_a_time(setup):
    from sae_core.circuits import edge_weights

    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    ranked = ranked_nodes(effects)
    downstream = ranked[ranked.site != min(saes, key=lambda s: s.order_key).short].head(5)
    one = edge_weights(loaded, saes, prompt, effects, downstream, chunk=1)
    five = edge_weights(loaded, saes, prompt, effects, downstream, chunk=5)
    pd.testing.assert_frame_equal(one, five, rtol=1e-4, atol=1e-7)


def test_thresholds_prune_monotonically(setup):
    from sae_core.circuits.graph import CircuitOptions, pruned_edges, pruned_nodes

    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    ranked = ranked_nodes(effects)
    previous = None
    for threshold in (0.0, 1e-4, 1e-3, 1e-2, 1e-1):
        kept = pruned_nodes(ranked, CircuitOptions(max_nodes=10**6, node_threshold=threshold))
        ids = set(zip(kept.site, kept.position, kept.feature))
        assert previous is None or ids <= previous
        assert (kept.effect.abs() >= threshold).all()
        previous = ids
    from sae_core.circuits import edge_weights

    edges = edge_weights(loaded, saes, prompt, effects, ranked.head(12))
    previous = None
    for threshold in (0.0, 1e-4, 1e-3, 1e-2):
        kept = pruned_edges(edges, CircuitOptions(max_edges=10**6, edge_threshold=threshold))
        ids = set(zip(kept.up_site, kept.up_position, kept.up_feature, kept.down_site, kept.down_position, kept.down_feature))
        assert previous is None or ids <= previous
        previous = ids


def test_the_circuit_command_writes_a_graph_that_holds_together(precomputed_run, tmp_path, capsys):
    import json

    from sae_core.cli import main

    out = tmp_path / "graph.json"
    assert main(["circuit", str(precomputed_run), "--prompt", TEXT, "--target", "#5", "--minus", "#7", "--max-nodes", "40",
                 "--mean-tokens", "512", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "faithfulness" in printed and str(out) in printed
    graph = json.loads(out.read_text())
    assert graph["target"] == {"position": len(graph["tokens"]) - 1, "token": 5, "minus_token": 7}
    assert 0 < len(graph["nodes"]) <= 40 and graph["settings"]["ablate_to"] == "mean"
    ids = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in graph["edges"]) and graph["edges"]
    effects = [abs(n["effect"]) for n in graph["nodes"]]
    assert effects == sorted(effects, reverse=True)
    assert any(n["label"] for n in graph["nodes"] if not n["error"])  # labels from the run's feature file
    assert [p["nodes"] for p in graph["curve"]][-1] == len(graph["nodes"])
    assert main(["circuit", str(precomputed_run), "--prompt", TEXT, "--target", "not one token at all"]) == 2
    assert "give exactly one token" in capsys.readouterr().err


def test_a_site_whose_every_route_crosses_a_held_site_has_no_direct_edges(tiny_loaded):
    """L0M reaches L1A only through the residual stream after layer 0, which L0R holds: no L0M → L1A edge, while
    L0R → L1A edges exist (and L0M → L0R ones)."""
    from helpers import random_sae

    from sae_core.circuits import edge_weights
    from sae_core.model.sites import parse_site

    saes = {parse_site(s): random_sae(s, "standard", d_sae=32, seed=i) for i, s in enumerate(("L0M", "L0R", "L1A"))}
    prompt = tokenize_prompt(tiny_loaded, TEXT)
    target = Target(position=len(prompt.ids) - 1, token=5)
    effects = node_effects(tiny_loaded, saes, prompt, target)
    ranked = ranked_nodes(effects)
    downstream = pd.concat([ranked[ranked.site == "L1A"].head(3), ranked[ranked.site == "L0R"].head(3)])
    edges = edge_weights(tiny_loaded, saes, prompt, effects, downstream)
    into_attn = edges[edges.down_site == "L1A"]
    assert set(into_attn.up_site) == {"L0R"} and len(into_attn) > 0
    assert set(edges[edges.down_site == "L0R"].up_site) == {"L0M"}


def test_nodes_and_edges_summed_over_positions_are_sums_of_the_per_position_ones(setup):
    """Marks et al.'s summed nodes: a feature's effect is the sum of its effects at every position, keeping it keeps
    every position, and an edge between two summed nodes is the sum of the per-position edges between them."""
    from sae_core.circuits import edge_weights
    from sae_core.circuits.graph import CircuitOptions, find_circuit
    from sae_core.circuits.nodes import ALL_POSITIONS

    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    per_position, summed = ranked_nodes(effects), ranked_nodes(effects, sum_positions=True)
    assert (summed.position == ALL_POSITIONS).all() and len(summed) == len(per_position) // len(prompt.ids)
    expected = per_position.groupby(["site", "feature"])["effect"].sum()
    got = summed.set_index(["site", "feature"])["effect"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), rtol=1e-5, atol=1e-7)

    top = summed.head(8)
    every_position = per_position.merge(top[["site", "feature"]], on=["site", "feature"])
    for site, (kept_f, kept_e) in keep_nodes(effects, top).items():
        other_f, other_e = keep_nodes(effects, every_position)[site]
        assert torch.equal(kept_f, other_f) and torch.equal(kept_e, other_e)

    last = max(saes, key=lambda s: s.order_key)
    at_last = summed[summed.site == last.short]
    downstream = pd.concat([at_last[at_last.feature >= 0].head(2), at_last[at_last.feature < 0]])
    edges = edge_weights(loaded, saes, prompt, effects, downstream, sum_positions=True, chunk=2)
    assert len(edges) > 0 and (edges.up_position == ALL_POSITIONS).all() and (edges.down_position == ALL_POSITIONS).all()
    down_every = per_position.merge(downstream[["site", "feature"]], on=["site", "feature"])
    per_edge = edge_weights(loaded, saes, prompt, effects, down_every, chunk=4)
    keys = ["up_site", "up_feature", "down_site", "down_feature"]
    expected = per_edge.groupby(keys)["weight"].sum()
    got = edges.set_index(keys)["weight"]
    pd.testing.assert_series_equal(got.sort_index(), expected.loc[got.index].sort_index(), rtol=1e-4, atol=1e-6)
    assert (expected.drop(got.index).abs() < 1e-6).all()  # what the summed edges leave out sums to zero

    graph = find_circuit(loaded, saes, prompt, target, CircuitOptions(positions="sum", max_nodes=10**6, max_edges=50),
                         log=lambda m: None)
    assert {n["position"] for n in graph["nodes"]} == {ALL_POSITIONS} and graph["settings"]["positions"] == "sum"
    ids = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in graph["edges"]) and graph["edges"]
    assert graph["curve"][-1]["faithfulness"] == pytest.approx(1.0, abs=1e-4)

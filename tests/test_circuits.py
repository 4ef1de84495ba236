"""Sparse feature circuits on the tiny model with its own SAEs: node effects against finite differences, integrated
gradients' completeness, the whole graph's faithfulness, error nodes to first order, and clear errors."""

from __future__ import annotations

import pytest
import torch

from sae_core.circuits import (
    CircuitError,
    SiteMeans,
    circuit_metric,
    faithfulness_curve,
    keep_nodes,
    node_effects,
    ranked_nodes,
)
from sae_core.circuits.nodes import _logits, split_site
from sae_core.interventions.attribution import Target
from sae_core.interventions.prompt_activations import PromptTokens, tokenize_prompt
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
        def fn(x):
            f, e = split_site(sae, x[0], real)
            f, e = change(site, f.clone(), e.clone())
            return (sae.decode(f) + e)[None]
        return fn

    with torch.no_grad():
        return float(target.value(_logits(loaded, prompt, {s: fn_for(s, sae) for s, sae in saes.items()})))


def test_splicing_every_site_with_its_error_term_leaves_the_metric_unchanged(setup):
    loaded, saes, prompt, target = setup
    effects = node_effects(loaded, saes, prompt, target)
    with torch.no_grad():
        plain = float(target.value(_logits(loaded, prompt, {})))
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

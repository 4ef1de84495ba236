"""The nodes of a sparse feature circuit (Marks et al. 2024) and their effects on a metric.

With an SAE at a site, the site's output is `x = decode(f) + e`: its features `f` (one node per position and
feature) plus its error term `e = x − x̂` (one node per position); a transcoder's features are read from the MLP's
input and its error term is `MLP(input) − decode(f)`, so the MLP itself is replaced. Spliced in this way the model
computes exactly what it computed before, and the other sites are transparent (their own error terms absorb any
change), so a node's effect is its total effect through the rest of the model. A node's **effect** is how
much it adds to the metric: `(clean − patch) · ∂m/∂node`, where `patch` is what the node is ablated to
(zero, or its mean over reference text: `SiteMeans`). Removing the node changes the metric by about −effect.

- **Attribution patching** (`method="atp"`): the gradient at the clean values, one forward and one backward
  pass for every site at once; first order, so it can miss saturated nodes.
- **Integrated gradients** (`method="ig"`): per site, the gradient averaged over `steps` points on the line
  from the patch to the clean values of all that site's nodes (midpoint rule). A site's effects then sum
  to `m(clean) − m(that site's nodes all patched)` as the steps grow (the completeness axiom). Ablate residual
  sites to their means, not to zero: zeroing a whole residual stream sends the path near the origin, where the
  next norm's 1/RMS explodes and the integral converges with no practical number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..activations.harvest import sites_to_capture
from ..errors import UserError
from ..interventions.attribution import Target, check_target, spliced_logits
from ..interventions.prompt_activations import PromptTokens
from ..model.hooks import run_to_sites
from ..model.load import LoadedModel
from ..model.sites import Site
from ..saes import SAE

METHODS = ("atp", "ig")
ALL_POSITIONS = -1
"""The `position` of a node summed over positions (one node per site and feature)."""


class CircuitError(UserError):
    """A circuit request that cannot be answered (no SAEs, an empty prompt, a target outside it)."""


@dataclass(frozen=True)
class SiteMeans:
    """What a site's nodes are ablated to: each feature's mean activation `(d_sae,)` and the mean error `(d_in,)`."""

    features: Tensor
    error: Tensor


@dataclass(frozen=True)
class SiteNodes:
    """One site's nodes on one prompt: clean values, their effects and the metric's gradients at them."""

    activations: Tensor
    """(T, d_sae) clean feature activations (0 at position 0 and special tokens: those live in the error term)."""
    errors: Tensor
    """(T, d_out) clean error terms `x − decode(f)` (d_out: the width the SAE writes, d_in but for a transcoder)."""
    feature_effects: Tensor
    """(T, d_sae) what each feature at each position adds to the metric."""
    error_effects: Tensor
    """(T,) what the error term at each position adds to the metric."""
    feature_grads: Tensor
    """(T, d_sae) `∂m/∂f` (averaged along the path for integrated gradients): what edges into these nodes weigh by."""
    error_grads: Tensor
    """(T, d_in) `∂m/∂e`, likewise."""


@dataclass(frozen=True)
class NodeEffects:
    """Every node's effect on the metric for one prompt."""

    value: float
    """The metric on the clean prompt."""
    sites: dict[Site, SiteNodes]
    method: str
    steps: int


def check_request(loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, target: Target) -> None:
    """A CircuitError naming the problem, for requests no circuit can answer."""
    if not saes:
        raise CircuitError("no SAEs to build a circuit from: the run has no SAE at any site of this model")
    if len(prompt.ids) == 0:
        raise CircuitError("the prompt is empty; type some text")
    check_target(prompt, target, loaded.layout.unembed.weight.shape[0], CircuitError)


def split_site(sae: SAE, x: Tensor, real: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """A site's output `(..., T, d_out)` as its nodes: features `(..., T, d_sae)` of `source` (what the SAE reads: x
    itself, or a transcoder's MLP input), 0 where `real` `(T,)` is False, and error `(..., T, d_out)`."""
    f = sae.encode(source) * real[:, None]
    return f, x - sae.decode(f)


@torch.no_grad()
def clean_nodes(loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens) -> dict[Site, tuple[Tensor, Tensor]]:
    """Every site's clean features and error terms on the prompt (one forward pass, up to the deepest site)."""
    acts = run_to_sites(loaded.model, prompt.ids[None].to(loaded.device), sites=sites_to_capture(saes), layout=loaded.layout)
    real = prompt.real.to(loaded.device)
    return {site: split_site(sae, acts[site.target][0], real, acts[site][0]) for site, sae in saes.items()}


def node_effects(
    loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, target: Target, *,
    method: str = "atp", steps: int = 10, means: dict[Site, SiteMeans] | None = None,
) -> NodeEffects:
    """The effect of every feature at every position of every site, and of every site's error term, on `target`
    (ablating to zero, or to `means`); `method` "atp" (attribution patching) or "ig" (integrated gradients, `steps`)."""
    check_request(loaded, saes, prompt, target)
    if method not in METHODS:
        raise CircuitError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "ig" and steps < 1:
        raise CircuitError(f"--ig-steps must be at least 1, got {steps}")
    clean = clean_nodes(loaded, saes, prompt)
    patches = {site: _patch(clean[site], (means or {}).get(site)) for site in saes}
    with torch.enable_grad():
        if method == "atp":
            value, grads = _output_grads(loaded, prompt, target, {site: None for site in saes}, saes)
            mean_grads = grads
        else:
            with torch.no_grad():
                value = float(target.value(spliced_logits(loaded, prompt, {})))
            mean_grads = {}
            for site in saes:
                total = torch.zeros_like(clean[site][1])
                for i in range(steps):
                    alpha = (i + 0.5) / steps
                    _, grads = _output_grads(loaded, prompt, target, {site: alpha}, saes, clean, patches)
                    total += grads[site]
                mean_grads[site] = total / steps
    sites = {}
    for site, sae in saes.items():
        (f, e), (pf, pe), g = clean[site], patches[site], mean_grads[site]
        feature_grads = decoder_vjp(sae, f, g)
        sites[site] = SiteNodes(f, e, (f - pf) * feature_grads, ((e - pe) * g).sum(-1), feature_grads, g)
    return NodeEffects(value, sites, method, steps if method == "ig" else 1)


def decoder_vjp(sae: SAE, f: Tensor, grad: Tensor) -> Tensor:
    """`∂m/∂f` `(T, d_sae)` from `∂m/∂x` `(T, d_in)` through the SAE's decoder (`x = decode(f) + e`)."""
    with torch.enable_grad():
        leaf = f.detach().requires_grad_(True)
        (out,) = torch.autograd.grad(sae.decode(leaf), leaf, grad_outputs=grad.to(f.dtype))
    return out


def _patch(clean: tuple[Tensor, Tensor], means: SiteMeans | None) -> tuple[Tensor, Tensor]:
    """What a site's nodes are ablated to, shaped like its clean nodes: zeros, or the means."""
    f, e = clean
    if means is None:
        return torch.zeros_like(f), torch.zeros_like(e)
    if means.features.shape != (f.shape[1],) or means.error.shape != (e.shape[1],):
        raise CircuitError(f"means of shape {tuple(means.features.shape)} / {tuple(means.error.shape)} do not fit an SAE "
                           f"with d_sae {f.shape[1]} and d_in {e.shape[1]}")
    return means.features.to(f).expand_as(f), means.error.to(e).expand_as(e)


def _output_grads(
    loaded: LoadedModel, prompt: PromptTokens, target: Target, alphas: dict[Site, float | None], saes: dict[Site, SAE],
    clean: dict[Site, tuple[Tensor, Tensor]] | None = None, patches: dict[Site, tuple[Tensor, Tensor]] | None = None,
) -> tuple[float, dict[Site, Tensor]]:
    """The metric and `∂m/∂x` `(T, d_in)` at each site in `alphas`: at its clean output (alpha None), or with its nodes
    set to `patch + alpha · (clean − patch)` (the rest of the model as it is)."""
    probes: dict[Site, Tensor] = {}

    def fn_for(site: Site, alpha: float | None) -> Callable[[Tensor, Tensor], Tensor]:
        def fn(x: Tensor, source: Tensor) -> Tensor:
            if alpha is not None:
                assert clean is not None and patches is not None
                (f, e), (pf, pe) = clean[site], patches[site]
                x = (saes[site].decode(pf + alpha * (f - pf)) + pe + alpha * (e - pe))[None].to(x.dtype)
            # ∂m/∂probe = ∂m/∂(site output), through every later site too (x keeps its graph)
            probe = torch.zeros_like(x, requires_grad=True)
            probes[site] = probe
            return x + probe
        return fn

    value = target.value(spliced_logits(loaded, prompt, {site: fn_for(site, a) for site, a in alphas.items()}))
    value.backward()
    return float(value.detach()), {site: probe.grad[0].float() for site, probe in probes.items()}  # type: ignore[index]

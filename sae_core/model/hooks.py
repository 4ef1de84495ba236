"""Capture, splice and steer sites with forward hooks, as context managers that always clean up.

Each hooked module gets one dispatcher hook that first applies every active modifier (splice,
steer) in the order they were entered and then shows the result to every reader (capture). So a
capture sees the activation that flows on downstream, whatever the nesting order. The dispatcher
runs before any other forward hook of the module (e.g. transformers' `output_hidden_states`
recorder), so those also see the modified activation.

A transcoder site (`L{i}T`) lives on the MLP module too: a capture reads the module's input, and a
splice replaces its output, computed from `(output, input)`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from sae_core.model.layout import ModelLayout, find_layout
from sae_core.model.sites import Site, parse_site


class StopForward(Exception):
    """Raised from a hook once the deepest needed site is captured, so the rest of the model never runs."""


def site_output(output: Any) -> Tensor:
    """The activation in a module output: the tensor itself, or element 0 of a tuple (attention modules)."""
    return output[0] if isinstance(output, tuple) else output


def replace_output(output: Any, new: Tensor) -> Any:
    """`output` with its activation replaced by `new`; a tuple keeps its other elements."""
    return (new, *output[1:]) if isinstance(output, tuple) else new


class _Dispatcher:
    """The one forward hook that this module installs on a hooked module."""

    def __init__(self, module: nn.Module) -> None:
        self.modifiers: list[Callable[[Tensor, Tensor | None], Tensor]] = []
        self.readers: list[Callable[[Tensor, Tensor | None], None]] = []
        self.handle = module.register_forward_hook(self, prepend=True)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        x = site_output(output)
        inp = args[0] if args and isinstance(args[0], Tensor) else None
        for modify in list(self.modifiers):
            x = modify(x, inp)
        for read in list(self.readers):
            read(x, inp)
        return replace_output(output, x) if self.modifiers else None


_DISPATCHERS: weakref.WeakKeyDictionary[nn.Module, _Dispatcher] = weakref.WeakKeyDictionary()


@contextmanager
def _hooked(module: nn.Module, role: str, fn: Callable) -> Iterator[None]:
    """Add `fn` as a modifier or reader of `module` while the context is active."""
    dispatcher = _DISPATCHERS.get(module)
    if dispatcher is None:
        dispatcher = _DISPATCHERS[module] = _Dispatcher(module)
    entries = dispatcher.modifiers if role == "modifier" else dispatcher.readers
    entries.append(fn)
    try:
        yield
    finally:
        entries.remove(fn)
        if not dispatcher.modifiers and not dispatcher.readers:
            dispatcher.handle.remove()
            del _DISPATCHERS[module]


def _resolve(model: nn.Module, layout: ModelLayout | None, site: Site | str) -> tuple[ModelLayout, Site]:
    layout = layout if layout is not None else find_layout(model)
    return layout, site if isinstance(site, Site) else parse_site(site, layout.n_layers)


def _source(site: Site, x: Tensor, inp: Tensor | None) -> Tensor:
    """What the SAE at `site` reads in a hook call: the module's input for a transcoder, its output otherwise."""
    if not site.is_transcoder:
        return x
    if inp is None:
        raise RuntimeError(f"{site}: the MLP module was called without a positional input, so a transcoder cannot read it")
    return inp


@contextmanager
def _source_of(layout: ModelLayout, site: Site) -> Iterator[Callable[[Tensor, Tensor | None], Tensor]]:
    """`(x, inp) -> source` for a modifier of `site`'s output module. A transcoder whose output module is not the
    MLP itself (Gemma's post-MLP norm) gets the MLP's input from a reader on the MLP, which runs first."""
    mlp = layout.source_module_for(site)
    if mlp is layout.module_for(site):
        yield lambda x, inp: _source(site, x, inp)
        return
    seen: dict[str, Tensor] = {}

    def keep(x: Tensor, inp: Tensor | None) -> None:
        seen["input"] = _source(site, x, inp)

    with _hooked(mlp, "reader", keep):
        yield lambda x, inp: seen["input"]


@contextmanager
def capture(
    model: nn.Module,
    sites: Iterable[Site | str],
    *,
    layout: ModelLayout | None = None,
    stop_early: bool = True,
) -> Iterator[dict[Site, Tensor]]:
    """Yield a dict that each forward pass fills with every site's activation `(B, T, d_model)`, detached: the
    output, or for a transcoder site the MLP's input (capture its `target` too for the output).

    With `stop_early`, the hook of the last site in execution order raises `StopForward`: the caller
    runs the forward pass and catches it (`run_to_sites` does both).
    """
    layout = layout if layout is not None else find_layout(model)
    # in execution order: a transcoder's reader runs before the MLP output's on their shared module
    wanted = sorted(dict.fromkeys(_resolve(model, layout, s)[1] for s in sites), key=lambda s: s.order_key)
    if not wanted:
        raise ValueError("capture needs at least one site")
    last = wanted[-1]
    acts: dict[Site, Tensor] = {}

    def reader(site: Site) -> Callable[[Tensor, Tensor | None], None]:
        def read(x: Tensor, inp: Tensor | None) -> None:
            acts[site] = _source(site, x, inp).detach()
            if stop_early and site == last:
                raise StopForward
        return read

    with ExitStack() as stack:
        for site in wanted:
            stack.enter_context(_hooked(layout.source_module_for(site), "reader", reader(site)))
        yield acts


def run_to_sites(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    sites: Iterable[Site | str] = (),
    layout: ModelLayout | None = None,
) -> dict[Site, Tensor]:
    """Run the model without its LM head only as far as the deepest site; `{site: (B, T, d_model)}`.

    input_ids, attention_mask: (B, T).
    """
    layout = layout if layout is not None else find_layout(model)
    with torch.no_grad(), capture(model, sites, layout=layout, stop_early=True) as acts:
        try:
            layout.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
    return dict(acts)


def _masked(new: Tensor, old: Tensor, mask: Tensor | None, what: str) -> Tensor:
    """`new` where mask `(B, T)` is True, `old` elsewhere; `new` everywhere when mask is None."""
    if mask is None:
        return new
    if mask.shape != old.shape[:2]:
        raise ValueError(
            f"{what} mask has shape {tuple(mask.shape)} but the activation is {tuple(old.shape)}: "
            "give a (B, T) bool mask for this forward pass, or None to act at every position "
            "(masks cannot follow the one-token steps of cached generation)"
        )
    return torch.where(mask.to(old.device, torch.bool).unsqueeze(-1), new, old)


@contextmanager
def splice(
    model: nn.Module,
    site: Site | str,
    fn: Callable[[Tensor, Tensor], Tensor],
    *,
    mask: Tensor | None = None,
    layout: ModelLayout | None = None,
) -> Iterator[None]:
    """Replace the site's output x `(B, T, d)` by `fn(x, source)` where `mask` `(B, T)` is True (everywhere if None);
    `source` is what the site's SAE reads: x itself, or for a transcoder site the MLP's input. An SAE given as `fn`
    (anything with `encode` and `decode`) splices in `sae(source)`, its reconstruction (a transcoder's prediction).

    For SAE reconstructions (loss recovered) and ablations; works inside `generate` when mask is None.
    """
    layout, site = _resolve(model, layout, site)
    if hasattr(fn, "encode") and hasattr(fn, "decode"):
        fn = _reconstruction(fn)
    with _source_of(layout, site) as source:

        def modify(x: Tensor, inp: Tensor | None) -> Tensor:
            new = fn(x, source(x, inp))
            if new.shape != x.shape:
                raise ValueError(f"splice at {site}: fn returned shape {tuple(new.shape)} for input {tuple(x.shape)}")
            return _masked(new.to(x.dtype), x, mask, f"splice at {site}:")

        with _hooked(layout.module_for(site), "modifier", modify):
            yield


def _reconstruction(sae: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, source: sae(source)


@contextmanager
def steer(
    model: nn.Module,
    site: Site | str,
    direction: Tensor,
    alpha: float = 1.0,
    *,
    positions: Tensor | None = None,
    layout: ModelLayout | None = None,
) -> Iterator[None]:
    """Add `alpha * direction` (direction: `(d_model,)`) to the site's output at `positions` `(B, T)` or everywhere.

    Works inside `generate` when positions is None.
    """
    layout, site = _resolve(model, layout, site)
    if direction.shape != (layout.d_model,):
        raise ValueError(f"steer at {site}: direction must have shape ({layout.d_model},), got {tuple(direction.shape)}")
    delta = alpha * direction.detach()

    def modify(x: Tensor, inp: Tensor | None) -> Tensor:
        return _masked(x + delta.to(x.device, x.dtype), x, positions, f"steer at {site}:")

    with _hooked(layout.module_for(site), "modifier", modify):
        yield

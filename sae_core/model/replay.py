"""Rerun a model from one decoder layer on: the clean forward's per-layer inputs, replayed with hooks in place.

Evaluating a suite splices each site's SAE (and zero) into the forward pass, 1 + 2 × sites passes per
batch. Everything before the spliced layer is the clean pass again, so `LayerReplay` keeps what each
layer was called with during one clean pass and reruns only layers L… and the head: on average about
half of the layers. It checks itself against the clean logits (one layer and the head) and reports when
the model's head does more than final norm + unembedding (e.g. logit soft-capping), so callers can fall
back to full forward passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .layout import ModelLayout


class LayerReplay:
    """The inputs of every decoder layer in one clean forward pass, and the logits it produced."""

    def __init__(self, model: torch.nn.Module, layout: ModelLayout, input_ids: Tensor, attention_mask: Tensor):
        self.layers, self.layout = layout.layers, layout
        self.calls: list[tuple[tuple, dict[str, Any]] | None] = [None] * len(self.layers)

        def keep(i: int):
            def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
                self.calls[i] = (args, kwargs)
            return hook

        handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:  # no KV cache: replayed layers must not append to one the clean pass filled
            self.logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        finally:
            for handle in handles:
                handle.remove()
        self.exact = all(c is not None for c in self.calls) and torch.allclose(
            self.from_layer(len(self.layers) - 1), self.logits, rtol=1e-4, atol=1e-4
        )
        """Whether replaying reproduces the model's own logits (else use full forward passes)."""

    def from_layer(self, start: int) -> Tensor:
        """Logits `(B, T, V)` of layers `start…` and the head, fed layer `start`'s clean input; hooks apply."""
        args, kwargs = self.calls[start]  # type: ignore[misc]
        hidden = args[0] if args else kwargs["hidden_states"]
        for i in range(start, len(self.layers)):
            args, kwargs = self.calls[i]  # type: ignore[misc]
            out = self.layers[i](hidden, *args[1:], **kwargs) if args else self.layers[i](**{**kwargs, "hidden_states": hidden})
            hidden = out[0] if isinstance(out, tuple) else out
        return self.layout.unembed(self.layout.final_norm(hidden))

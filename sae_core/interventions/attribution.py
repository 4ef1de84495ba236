"""Attribute a prediction to SAE features: activation × gradient of a target logit, checked by ablation.

The SAEs are spliced in as `x̂ + (x − x̂).detach()`: the forward pass is unchanged (the SAE's error
term is kept), but the gradient of the target flows to every feature activation at every token.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from ..errors import UserError
from ..model.hooks import splice
from ..model.load import LoadedModel
from ..model.sites import Site
from ..saes import SAE
from ..text.tokens import decode_each
from .prompt_activations import PromptTokens


@dataclass(frozen=True)
class Target:
    """The logit of `token` at `position` (the prediction of the next token), minus that of `minus_token` if given."""

    position: int
    token: int
    minus_token: int | None = None

    def value(self, logits: Tensor) -> Tensor:
        """The target from `(T, vocab)` logits."""
        out = logits[self.position, self.token]
        return out - logits[self.position, self.minus_token] if self.minus_token is not None else out


def token_id(tokenizer, text: str) -> int:
    """The id of one token given as its text (leading space included, e.g. " Paris") or as `#123`."""
    if text.startswith("#") and text[1:].isdigit():
        return int(text[1:])
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        shown = " | ".join(decode_each(tokenizer, ids)) or "nothing"
        raise UserError(f"{text!r} is {len(ids)} tokens ({shown}); give exactly one token, or an id as #123")
    return int(ids[0])


def top_predictions(loaded: LoadedModel, prompt: PromptTokens, position: int, n: int = 5) -> list[tuple[int, float]]:
    """The model's `n` most likely next tokens after `position`, with probabilities."""
    with torch.no_grad():
        logits = spliced_logits(loaded, prompt, {})[position]
    probs = logits.softmax(-1).topk(n)
    return [(int(i), float(p)) for i, p in zip(probs.indices, probs.values)]


def check_target(prompt: PromptTokens, target: Target, vocab: int, error: type[UserError] = UserError) -> None:
    """An `error` naming the problem when the target's position is outside the prompt or a token outside the vocabulary."""
    if not 0 <= target.position < len(prompt.ids):
        raise error(f"target position {target.position} is outside the prompt (0 … {len(prompt.ids) - 1})")
    for token in (target.token, target.minus_token):
        if token is not None and not 0 <= token < vocab:
            raise error(f"token id {token} is outside the vocabulary (0 … {vocab - 1})")


def spliced_logits(loaded: LoadedModel, prompt: PromptTokens, fns: dict[Site, Callable[[Tensor, Tensor], Tensor]]) -> Tensor:
    """`(T, vocab)` logits with each site's output `(1, T, d)` replaced by `fns[site](x, source)` (`hooks.splice`)."""
    device = loaded.device
    with ExitStack() as stack:
        for site, fn in fns.items():
            stack.enter_context(splice(loaded.model, site, fn, layout=loaded.layout))
        return loaded.model(input_ids=prompt.ids[None].to(device)).logits[0].float()


def attribute(
    loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, target: Target, top: int = 50
) -> tuple[float, pd.DataFrame]:
    """The target's value and the `top` (site, position, feature) triples by |activation × gradient|.

    Features at position 0 and special tokens are not counted (they are held at zero).
    """
    check_target(prompt, target, loaded.layout.unembed.weight.shape[0])
    real = prompt.real.to(loaded.device)
    leaves: dict[Site, Tensor] = {}

    def fn_for(site: Site, sae: SAE) -> Callable[[Tensor, Tensor], Tensor]:
        def fn(x: Tensor, source: Tensor) -> Tensor:
            acts = (sae.encode(source[0]) * real[:, None]).detach().requires_grad_(True)
            leaves[site] = acts
            x_hat = sae.decode(acts)[None]
            return x_hat + (x - x_hat).detach()
        return fn

    with torch.enable_grad():
        value = target.value(spliced_logits(loaded, prompt, {s: fn_for(s, sae) for s, sae in saes.items()}))
        value.backward()
    rows = []
    for site, leaf in leaves.items():
        # no gradient: every route from this site crosses another spliced site (a transcoder under its MLP-output SAE)
        acts = leaf.detach()
        grads = leaf.grad if leaf.grad is not None else torch.zeros_like(acts)
        scores = acts * grads
        positions, features = scores.nonzero(as_tuple=True)
        for p, f in zip(positions.tolist(), features.tolist()):
            rows.append((site.short, p, prompt.tokens[p], f, float(acts[p, f]), float(grads[p, f]), float(scores[p, f])))
    table = pd.DataFrame(rows, columns=["site", "position", "token", "feature", "activation", "gradient", "attribution"])
    table = table.reindex(table["attribution"].abs().sort_values(ascending=False).index).head(top).reset_index(drop=True)
    return float(value.detach()), table


@torch.no_grad()
def ablate(
    loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens, target: Target, features: list[tuple[Site, int, int]]
) -> tuple[float, float]:
    """The target before and after zeroing the given (site, position, feature) activations (error term kept)."""
    check_target(prompt, target, loaded.layout.unembed.weight.shape[0])
    before = float(target.value(spliced_logits(loaded, prompt, {})))

    def fn_for(site: Site, sae: SAE) -> Callable[[Tensor, Tensor], Tensor]:
        chosen = [(p, f) for s, p, f in features if s == site]

        def fn(x: Tensor, source: Tensor) -> Tensor:
            acts = sae.encode(source[0]) * prompt.real.to(x.device)[:, None]
            removed = torch.zeros_like(x[0])
            for p, f in chosen:
                removed[p] += acts[p, f] * sae.W_dec[f]
            return x - removed[None]
        return fn

    after = float(target.value(spliced_logits(loaded, prompt, {s: fn_for(s, saes[s]) for s in {s for s, _, _ in features}})))
    return before, after

"""Steer generation with SAE features: add α·W_dec[f] at a site on every position, or clamp a feature's activation.

Clamping replaces the feature's activation a by `value` at every position, i.e. adds
(value − a)·W_dec[f] to the site's output, keeping the SAE's error term.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError
from ..model.hooks import splice, steer
from ..model.load import LoadedModel
from ..model.sites import Site
from ..saes import SAE
from ..text.tokens import user_turn


@dataclass(frozen=True)
class FeatureEdit:
    """One feature to steer with: add `strength`·W_dec[feature] (mode "add") or clamp its activation to `strength`."""

    site: Site
    feature: int
    strength: float
    mode: str = "add"


def _clamp_fn(sae: SAE, feature: int, value: float):
    def fn(x: Tensor, source: Tensor) -> Tensor:
        acts = sae.encode(source)[..., feature]
        return x + (value - acts)[..., None] * sae.W_dec[feature]
    return fn


@torch.no_grad()
def generate(
    loaded: LoadedModel,
    saes: dict[Site, SAE],
    message: str,
    edits: list[FeatureEdit] = (),  # type: ignore[assignment]
    *,
    max_new_tokens: int = 48,
    chat: bool = True,
) -> str:
    """Greedy answer to `message` (in the chat template when `chat`) with the feature edits applied at every position."""
    if not message.strip():
        raise UserError("the message is empty; type a question or instruction")
    tokenizer = loaded.tokenizer
    text = user_turn(tokenizer, message, hint="untick the chat option to steer plain text") if chat else message
    device = loaded.device
    ids = tokenizer(text, add_special_tokens=not chat, return_tensors="pt").input_ids.to(device)
    with ExitStack() as stack:
        for edit in edits:
            if edit.site not in saes:
                raise UserError(f"no SAE at {edit.site.short} in this run; steer at one of {', '.join(s.short for s in saes)}")
            sae = saes[edit.site]
            if not 0 <= edit.feature < sae.cfg.d_sae:
                raise UserError(f"{edit.site.short} has no feature {edit.feature}; its features are 0 … {sae.cfg.d_sae - 1}")
            if edit.mode == "add":
                stack.enter_context(steer(loaded.model, edit.site, sae.W_dec[edit.feature], edit.strength, layout=loaded.layout))
            elif edit.mode == "clamp":
                stack.enter_context(splice(loaded.model, edit.site, _clamp_fn(sae, edit.feature, edit.strength), layout=loaded.layout))
            else:
                raise UserError(f"unknown steering mode {edit.mode!r}; use 'add' or 'clamp'")
        out = loaded.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

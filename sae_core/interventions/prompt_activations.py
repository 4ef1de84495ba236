"""Live feature activations on one prompt: tokenize (plain or chat-templated), run to the sites, encode.

Used by the app's Prompt page (and anyone in a notebook): every SAE's activation on every token,
and the features that matter most on the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError
from ..model.hooks import run_to_sites
from ..model.load import LoadedModel
from ..model.sites import Site
from ..saes import SAE
from ..text.tokens import decode_each, real_token_mask, render_chat, special_token_ids

DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class PromptTokens:
    """A tokenized prompt, as the model sees it."""

    ids: Tensor
    """(T,) token ids."""
    tokens: list[str]
    """Each token as text."""
    real: Tensor
    """(T,) True at real text tokens (not position 0, not special / template tokens)."""
    truncated_from: int | None
    """The prompt's length in tokens when it was cut to the limit, else None."""


def tokenize_prompt(loaded: LoadedModel, text: str, *, chat: bool = False, max_tokens: int | None = None) -> PromptTokens:
    """Token ids of `text` (a user message in the chat template when `chat`), cut to the model's context or `max_tokens`."""
    if not text.strip():
        raise UserError("the prompt is empty; type some text")
    tokenizer = loaded.tokenizer
    if chat:
        rendered = render_chat([{"role": "user", "content": text}], tokenizer)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    limit = max_tokens or DEFAULT_MAX_TOKENS
    if loaded.layout.max_positions:
        limit = min(limit, loaded.layout.max_positions)
    truncated_from = len(ids) if len(ids) > limit else None
    ids_t = torch.tensor(ids[:limit], dtype=torch.long)
    real = real_token_mask(ids_t[None], special_token_ids(tokenizer))[0]
    return PromptTokens(ids_t, decode_each(tokenizer, ids_t.tolist()), real, truncated_from)


@torch.no_grad()
def prompt_activations(loaded: LoadedModel, saes: dict[Site, SAE], prompt: PromptTokens) -> dict[Site, Tensor]:
    """`{site: (T, d_sae)}` feature activations on every token (zero at position 0 and special tokens)."""
    device = loaded.device
    acts = run_to_sites(loaded.model, prompt.ids[None].to(device), sites=list(saes), layout=loaded.layout)
    real = prompt.real.to(device)[:, None]
    return {site: (sae.encode(acts[site][0]) * real).cpu() for site, sae in saes.items()}


def strongest_features(acts: Tensor, n: int) -> list[int]:
    """The `n` features with the highest activation anywhere on the prompt, strongest first (only those that fire)."""
    peak = acts.max(dim=0).values
    top = peak.topk(min(n, peak.numel()))
    return [int(f) for f, v in zip(top.indices, top.values) if v > 0]

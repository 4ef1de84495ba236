"""The widgets a live page uses to say what it explains: a prompt, the sites, and a target logit at a position
(shared by the Attribution and Circuits pages). Bad input shows a message and stops the page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from sae_core.errors import UserError
from sae_core.interventions.attribution import Target
from sae_core.interventions.prompt_activations import PromptTokens
from sae_core.serving.live_model import LiveModel

from .prompt_view import token_labels
from .state import cached_job, max_prompt_tokens, prompt_chars, public


@dataclass(frozen=True)
class TargetChoice:
    """What the user asked to explain."""

    prompt: PromptTokens
    sites: tuple[str, ...]
    ids: tuple[int, ...]
    """The prompt's token ids: what the model sees, the key of results every session shares."""
    target: Target


def choose_target_or_stop(run: Path, live: LiveModel, default_sites: list[str]) -> TargetChoice:
    """Prompt, chat template, sites, position, the model's top predictions and the target (or a target minus
    another token's logit)."""
    names = [site.short for site in live.sites()]
    text = st.text_area("prompt", value="The capital of France is", height=90, max_chars=prompt_chars())
    chat = st.checkbox("render as a user message in the model's chat template")
    chosen = st.multiselect("sites", names, default=default_sites)
    try:
        prompt = live.tokenize(text, chat, max_prompt_tokens())
    except UserError as exc:
        st.error(public(exc, run))
        st.stop()
    if prompt.truncated_from:
        st.warning(f"The prompt has {prompt.truncated_from:,} tokens; only the first {len(prompt.ids):,} are used.")
    if not chosen:
        st.warning("Pick at least one site.")
        st.stop()
    labels = token_labels(prompt.tokens)
    position = labels.index(st.selectbox("predict the token after", labels, index=len(labels) - 1))
    ids = tuple(prompt.ids.tolist())
    try:
        predictions = cached_job(("predictions", str(run), ids, position), lambda: live.predictions(prompt, position),
                                 "running the model")
        shown = live.decode([i for i, _ in predictions])
        st.caption("model's top predictions: " + ", ".join(f"{token!r} {p:.1%}" for token, (_, p) in zip(shown, predictions)))
        left, right = st.columns(2)
        target_text = left.text_input("target token (text with its leading space, or #id)", value=f"#{predictions[0][0]}")
        minus_text = right.text_input("minus the logit of (optional)", value="")
        target = Target(position, live.token_id(target_text), live.token_id(minus_text) if minus_text.strip() else None)
    except UserError as exc:
        st.error(public(exc, run))
        st.stop()
    return TargetChoice(prompt, tuple(chosen), ids, target)


def target_label(live: LiveModel, target: Target) -> str:
    """`logit of ' Paris' after token 4`, or of `' are' − ' is'`."""
    named = live.decode([target.token] + ([target.minus_token] if target.minus_token is not None else []))
    return f"logit of {' − '.join(repr(token) for token in named)} after token {target.position}"

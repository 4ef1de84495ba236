"""A feature's contexts for explaining and for scoring, kept apart: the scorer never sees what the explainer saw.

The feature file holds each feature's top examples (ranked by activation) and samples from quantile
intervals of its activations. They are dealt alternately by rank (even → explainer, odd → held out), and
a context stays on the side it first went to, so no window of text reaches both. Non-activating
contexts come from `non_activating.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .text import crop

TOP = 0
NON_ACTIVATING = -1


@dataclass(frozen=True)
class Context:
    """A window of tokens with the feature's activation on each."""

    tokens: list[str]
    acts: list[float]
    """The feature's activation per token (0 where it does not fire)."""
    kind: int
    """0: a top example; j ≥ 1: a sample from quantile interval j (higher = stronger); -1: non-activating."""
    context_id: int
    counted: list[bool] | None = None
    """Tokens that may be marked in a fuzzing prompt (real text tokens); None means all."""

    @property
    def activating(self) -> bool:
        return self.kind != NON_ACTIVATING

    @property
    def peak(self) -> float:
        return max((a for a in self.acts if a == a), default=0.0)


@dataclass(frozen=True)
class FeatureSamples:
    """What the explainer and scorer get of one feature."""

    sae: str
    feature: int
    shown: list[Context]
    """For the explainer: top examples, then quantile samples (strongest interval first)."""
    held_out: list[Context]
    """For the scorer: activating contexts from every quantile interval (and the top), none of them shown."""
    example_contexts: set[int]
    """Every context of the feature's examples (non-activating contexts are drawn from elsewhere)."""


def split_examples(examples: pd.DataFrame, n_shown: int, n_held_out: int, shown_window: int, held_out_window: int,
                   sae: str = "", feature: int = -1) -> FeatureSamples:
    """Deal a feature's examples (rows of `FeatureStore.examples`) into shown and held-out contexts, cropped to
    ±`*_window` tokens around each example's peak."""
    side: dict[int, bool] = {}
    shown: dict[int, list[Context]] = {}
    held: dict[int, list[Context]] = {}
    # top examples claim their contexts first, then intervals from the strongest
    for r in sorted(examples.itertuples(), key=lambda r: (r.kind != TOP, -r.kind, r.rank)):
        to_shown = side.setdefault(int(r.context_id), int(r.rank) % 2 == 0)
        window = crop(len(r.tokens), int(r.max_index), shown_window if to_shown else held_out_window)
        acts = [float(a) for a in list(r.acts)[window]]
        context = Context(list(r.tokens)[window], acts, int(r.kind), int(r.context_id))
        (shown if to_shown else held).setdefault(int(r.kind), []).append(context)
    n_top = math.ceil(n_shown / 2)
    chosen = shown.get(TOP, [])[:n_top]
    chosen += _round_robin({k: v for k, v in shown.items() if k != TOP}, n_shown - len(chosen))
    if len(chosen) < n_shown:  # too few interval samples: more top examples
        chosen += shown.get(TOP, [])[n_top : n_top + n_shown - len(chosen)]
    held_out = _round_robin({k: v for k, v in held.items() if k != TOP}, n_held_out)
    if len(held_out) < n_held_out:  # a feature with few firings has few interval samples: use held-out top examples
        held_out += held.get(TOP, [])[: n_held_out - len(held_out)]
    return FeatureSamples(sae, feature, chosen, held_out, set(side))


def _round_robin(groups: dict[int, list[Context]], n: int) -> list[Context]:
    """Up to `n` contexts taking one from each group in turn, strongest group (highest kind) first."""
    out: list[Context] = []
    queues = [list(groups[k]) for k in sorted(groups, reverse=True)]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out

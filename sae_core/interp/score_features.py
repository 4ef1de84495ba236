"""Score explanations of a batch of features, each beside its two baselines, on held-out contexts.

For every feature the same contexts (held-out activating ones from every quantile interval, and verified
non-activating ones) are judged three times: with the explanation, with another feature's explanation
(*shuffled*) and with the feature's token handle (*handle*). The scorer sees every chat of one
(feature, text, task) as one group, so a local model runs the shared part once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..features.embed import Embedder
from .chat_models import ChatModel
from .prompts import detection_messages, fuzzing_messages
from .samples import Context
from .scores import auroc, balanced_accuracy, fuzz_marks
from .text import firing_marks, one_line

VARIANTS = ("explanation", "shuffled", "handle")
TASKS = ("detection", "fuzzing")


@dataclass(frozen=True)
class ScoringItem:
    """One feature's texts under test and the contexts they are judged on."""

    key: tuple[str, int]
    texts: dict[str, str | None]
    """By variant (`VARIANTS`); None where there is no such text (no other explanation to shuffle in)."""
    contexts: list[Context]
    """Held-out activating contexts, then non-activating ones."""


def score_batch(items: Sequence[ScoringItem], scorer: ChatModel, embedder: Embedder | None, *, seed: int = 0) -> list[dict[str, Any]]:
    """Per item: `scores` (`detection`, `detection_shuffled`, `detection_handle`, … NaN where not computable) and
    `details` (every context's answers)."""
    marks = [fuzz_marks(it.contexts, [firing_marks(c.acts) for c in it.contexts if c.activating], seed) for it in items]
    groups, where = [], []
    for i, it in enumerate(items):
        for variant, text in it.texts.items():
            if text is None or not it.contexts:
                continue
            groups.append([detection_messages(text, c) for c in it.contexts])
            where.append((i, variant, "detection"))
            groups.append([fuzzing_messages(text, c, m) for c, m in zip(it.contexts, marks[i])])
            where.append((i, variant, "fuzzing"))
    answers = scorer.yes_probabilities(groups) if groups else []
    p_yes: dict[tuple[int, str, str], list[float | None]] = dict(zip(where, answers))
    similarity = _similarities(items, embedder)
    out = []
    for i, it in enumerate(items):
        labels = [c.activating for c in it.contexts]
        scores: dict[str, float] = {}
        for variant in VARIANTS:
            suffix = "" if variant == "explanation" else f"_{variant}"
            for task in TASKS:
                p = p_yes.get((i, variant, task))
                scores[task + suffix] = balanced_accuracy(labels, p) if p is not None else math.nan
            sims = similarity.get((i, variant))
            scores["embedding" + suffix] = auroc(labels, sims) if sims is not None else math.nan
        details = {
            "contexts": [{"kind": c.kind, "context_id": c.context_id} for c in it.contexts],
            "answers": {f"{task}_{variant}": [_round(v) for v in p_yes[(i, variant, task)]]
                        for variant in VARIANTS for task in TASKS if (i, variant, task) in p_yes},
            "similarity": {variant: [_round(v) for v in similarity[(i, variant)]] for variant in VARIANTS if (i, variant) in similarity},
            "detection_auroc": auroc(labels, p_yes[(i, "explanation", "detection")]) if (i, "explanation", "detection") in p_yes else None,
        }
        out.append({"scores": scores, "details": details, "n_activating": sum(labels), "n_non_activating": len(labels) - sum(labels)})
    return out


def _similarities(items: Sequence[ScoringItem], embedder: Embedder | None) -> dict[tuple[int, str], list[float]]:
    """Cosine of each text under test with each of its feature's contexts (one embedding call for the batch)."""
    if embedder is None:
        return {}
    texts: list[str] = []
    spans = []
    for i, it in enumerate(items):
        queries = [(v, one_line(t)) for v, t in it.texts.items() if t is not None]
        if not it.contexts or not queries:
            continue
        start = len(texts)
        texts += [q for _, q in queries] + ["".join(c.tokens).replace("\n", " ") for c in it.contexts]
        spans.append((i, [v for v, _ in queries], start))
    if not texts:
        return {}
    vectors = embedder.embed(texts)
    out = {}
    for i, variants, start in spans:
        n_q, n_c = len(variants), len(items[i].contexts)
        sims = vectors[start : start + n_q] @ vectors[start + n_q : start + n_q + n_c].T
        for j, variant in enumerate(variants):
            out[(i, variant)] = [float(s) for s in np.asarray(sims[j])]
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)

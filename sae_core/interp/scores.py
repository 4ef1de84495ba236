"""How far to trust an explanation: detection, fuzzing and embedding scores, as EleutherAI delphi defines them.

- *Detection*: the scorer reads the explanation and one context at a time, activating (from every
  quantile interval) or not, and says whether the feature fires on it. Balanced accuracy: the mean of the
  hit rate on activating and the correct-rejection rate on non-activating contexts (0.5 = chance).
- *Fuzzing*: activating contexts with the firing tokens marked, and non-activating ones with as many
  random tokens marked; is the marking right? Balanced accuracy again.
- *Embedding*: the explanation's sentence-embedding similarity to each context; the AUROC of activating
  against non-activating contexts (0.5 = chance). No LLM involved.

An answer the scorer did not give (unparseable reply) counts as wrong on either side.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

from .samples import Context


def balanced_accuracy(activating: Sequence[bool], p_yes: Sequence[float | None]) -> float:
    """Mean of the Yes rate on activating items and the No rate on the others (Yes: p ≥ 0.5); NaN without both kinds."""
    hits = [p is not None and p >= 0.5 for a, p in zip(activating, p_yes) if a]
    rejections = [p is not None and p < 0.5 for a, p in zip(activating, p_yes) if not a]
    if not hits or not rejections:
        return math.nan
    return (sum(hits) / len(hits) + sum(rejections) / len(rejections)) / 2


def auroc(positive: Sequence[bool], scores: Sequence[float | None]) -> float:
    """Area under the ROC curve of `scores` separating positive from negative items (ties count half; None scores
    count as the lowest); NaN without both kinds."""
    pos = np.array([s if s is not None else -np.inf for p, s in zip(positive, scores) if p], dtype=float)
    neg = np.array([s if s is not None else -np.inf for p, s in zip(positive, scores) if not p], dtype=float)
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def fuzz_marks(contexts: Sequence[Context], activating_marks: Sequence[list[bool]], seed: int) -> list[list[bool]]:
    """Marks for fuzzing: the firing tokens of activating contexts (as given), and for non-activating ones as many
    random real tokens as the activating contexts mark on average (delphi's `n_incorrect`), at least one."""
    marked = [sum(m) for m in activating_marks]
    n_wrong = max(1, math.ceil(sum(marked) / len(marked))) if marked else 1
    out, it = [], iter(activating_marks)
    for c in contexts:
        if c.activating:
            out.append(next(it))
            continue
        allowed = [i for i, ok in enumerate(c.counted or [True] * len(c.tokens)) if ok] or list(range(len(c.tokens)))
        rng = np.random.default_rng([seed, c.context_id, zlib.crc32("".join(c.tokens).encode())])
        chosen = set(rng.choice(allowed, size=min(n_wrong, len(allowed)), replace=False).tolist())
        out.append([i in chosen for i in range(len(c.tokens))])
    return out


def mean_and_spread(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error and count of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan, len(finite)
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(var / len(finite)), len(finite)

"""What the Features page shows of explanations: the text, its scores beside their baselines, similar features.

No Streamlit here: pages render these, tests call them directly. Explanations are LLM output and are
shown literally (escaped), never as markup.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sae_core.features.reader import SCORES

from .feature_view import escape_markdown, feature_link

SCORE_HELP = {
    "detection": "balanced accuracy: does the scorer, given the explanation, tell held-out firing contexts from non-firing ones?",
    "fuzzing": "balanced accuracy: given the explanation, does the scorer tell correctly marked firing tokens from random marks?",
    "embedding": "AUROC: is the explanation's sentence embedding closer to firing contexts than to non-firing ones?",
}
BASELINES = {"": "explanation", "_shuffled": "another feature's explanation", "_handle": "token handle"}


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def score_table(row: dict[str, Any]) -> pd.DataFrame:
    """One row per score: the explanation's value, the two baselines' and the margin over the better baseline."""
    rows = []
    for score in SCORES:
        values = {label: _number(row.get(score + suffix)) for suffix, label in BASELINES.items()}
        baselines = [v for label, v in values.items() if label != "explanation" and v is not None]
        own = values["explanation"]
        rows.append({"score": score, **values,
                     "margin": None if own is None or not baselines else round(own - max(baselines), 3)})
    return pd.DataFrame(rows)


def verdict(row: dict[str, Any]) -> str:
    """A one-line reading of the scores: how many beat both baselines, and by how much detection does."""
    table = score_table(row)
    known = table.dropna(subset=["margin"])
    if known.empty:
        return "not scored: the feature has too few held-out contexts"
    beats = int((known["margin"] > 0.05).sum())
    return f"beats both baselines by more than 0.05 on {beats} of {len(known)} scores"


def explanation_markdown(row: dict[str, Any]) -> str:
    """The explanation as literal markdown text (quoted), or a note when the explainer gave nothing usable."""
    text = str(row.get("explanation") or "").strip()
    return f"> {escape_markdown(text)}" if text else "> *(the explainer gave no usable sentence)*"


def provenance(row: dict[str, Any]) -> str:
    """Who explained and scored, on how many held-out contexts, and when."""
    details = row.get("details") or {}
    auroc = details.get("detection_auroc")
    extra = f" · detection AUROC {auroc:.2f}" if isinstance(auroc, (int, float)) and not math.isnan(auroc) else ""
    return (f"explained by {row.get('explainer')} · scored by {row.get('scorer')} on {int(row.get('n_activating') or 0)} "
            f"firing and {int(row.get('n_non_activating') or 0)} non-firing held-out contexts{extra} · {row.get('created')}")


def similar_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Search or neighbour hits with a link column (for `st.dataframe`'s LinkColumn)."""
    return pd.DataFrame({
        "feature": [feature_link(s, f) for s, f in zip(frame["sae"], frame["feature"])],
        "sae": frame["sae"],
        "similarity": frame["similarity"].astype(float).round(3),
        "explanation": frame["explanation"].fillna(""),
        "detection": pd.to_numeric(frame["detection"], errors="coerce"),  # blank, not "None", where unexplained
        "label": frame["label"],
        "matched": frame["matched"],
    })

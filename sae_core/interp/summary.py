"""How trustworthy a run's explanations are overall: each score's distribution beside its baselines'."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..features.reader import SCORES, FeatureStore

VARIANTS = {"": "explanation", "_shuffled": "shuffled", "_handle": "token handle"}


def explanation_summary(store: FeatureStore, explainer: str | None = None) -> pd.DataFrame:
    """One row per (score, text): features scored, mean ± standard error, quartiles; plus the detection AUROC
    and the share of features whose explanation beats both baselines by more than 0.05. Current explanations only."""
    where, params = ("AND explainer = ?", [explainer]) if explainer else ("", [])
    df = store._df(f"SELECT * FROM explanations WHERE current {where}", params)
    rows = []
    for score in SCORES:
        for suffix, text in VARIANTS.items():
            rows.append(_row(score, text, df[score + suffix] if len(df) else pd.Series(dtype=float)))
    if len(df):
        aurocs = [json.loads(d).get("detection_auroc") for d in df["details"]]
        rows.append(_row("detection AUROC", "explanation", pd.Series([a for a in aurocs if a is not None], dtype=float)))
        for score in SCORES:
            best_baseline = df[[f"{score}_shuffled", f"{score}_handle"]].max(axis=1)
            known = df[score].notna() & best_baseline.notna()
            share = float((df[score][known] > best_baseline[known] + 0.05).mean()) if known.any() else np.nan
            rows.append({"score": score, "text": "beats both baselines by > 0.05", "features": int(known.sum()), "mean": share})
    return pd.DataFrame(rows)


def _row(score: str, text: str, values: pd.Series) -> dict:
    v = values.dropna().astype(float)
    q = v.quantile([0.25, 0.5, 0.75]) if len(v) else pd.Series([np.nan] * 3, index=[0.25, 0.5, 0.75])
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan
    return {"score": score, "text": text, "features": len(v), "mean": float(v.mean()) if len(v) else np.nan, "se": se,
            "p25": q[0.25], "median": q[0.5], "p75": q[0.75]}

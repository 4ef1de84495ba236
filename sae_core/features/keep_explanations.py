"""Explanations survive a new precompute of the same SAEs: they are carried from the old feature file to the new one.

An explanation describes an SAE's feature, not a feature file; so when `precompute` rebuilds the file of
SAEs whose weight files are unchanged (same names, sizes and modification times, as recorded in the
file's `sae_files`), their explanations and scores move to the new file. Their scores were computed on
the old file's examples (their `details` say which contexts); `explain --overwrite` scores them anew.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .reader import FeatureStore
from .schema import FeatureDBError


def kept_explanations(path: Path, sae_files: dict[str, Any]) -> pd.DataFrame:
    """The previous file's explanations of SAEs whose files are unchanged, with their `hook_name` (empty if none)."""
    if not path.exists():
        return pd.DataFrame()
    try:
        with FeatureStore(path) as store:
            old = store.meta.get("sae_files") or {}
            same = [hook for hook, stamp in sae_files.items() if old.get(hook) == stamp]
            if not same:
                return pd.DataFrame()
            return store._df("""SELECT e.*, s.hook_name FROM explanations e JOIN saes s USING (sae_id)
                                WHERE s.hook_name IN (SELECT unnest(?))""", [same])
    except FeatureDBError:
        return pd.DataFrame()  # an unreadable or older file has nothing to carry over

"""Steering presets from a refusal study, for the app's Steering page: the top features of each contrast at
the steering site, with strengths that reproduce the study's direction at its best strength."""

from __future__ import annotations

from pathlib import Path

import torch

from ..interventions.steering import FeatureEdit
from ..model.sites import Site
from ..saes import SAE
from .results import FEATURES_FILE, best_conditions, read_features_file, refusal_dir

DEFAULT_ALPHA = 0.2
"""Strength (× median residual norm) of a preset when the study has not measured its methods yet."""


def refusal_presets(run: str | Path, saes: dict[Site, SAE], k: int = 3) -> dict[str, list[FeatureEdit]]:
    """Preset name → feature edits ("add" mode). The top-k edits' strengths are split by each feature's
    difference of means so that together they add the study's unit top-k direction times its best α;
    empty when the run has no refusal study (or its steering SAE is not loaded)."""
    folder = refusal_dir(run)
    if not (folder / FEATURES_FILE).is_file():
        return {}
    data = read_features_file(folder)
    site = next((s for s in saes if s.short == data["steer_site"]), None)
    if site is None:
        return {}
    sae, scale = saes[site], data.get("residual_scale") or data["contrasts"]["prompt"][site.short]["resid_norm"]
    best = {method: c["alpha"] for method, c in best_conditions(data.get("conditions", []), include_zero=False).items()}
    presets = {}
    for contrast, by_site in data["contrasts"].items():
        rows = by_site[site.short]["features"][:k]
        if not rows:
            continue
        first = rows[0]
        name = f"{contrast}: feature #{first['feature']}"
        presets[f"refusal, {name}"] = [FeatureEdit(site, first["feature"], best.get(name, DEFAULT_ALPHA) * scale)]
        features = [r["feature"] for r in rows]
        weights = torch.tensor([r["diff"] for r in rows], dtype=torch.float32)
        norm = float((weights[:, None] * sae.W_dec.detach().float().cpu()[features]).sum(0).norm().clamp_min(1e-12))
        alpha = best.get(f"{contrast}: top-{len(rows)} features", DEFAULT_ALPHA) * scale
        presets[f"refusal, {contrast}: top-{len(rows)} features"] = [
            FeatureEdit(site, f, alpha * float(w) / norm) for f, w in zip(features, weights)]
    return presets

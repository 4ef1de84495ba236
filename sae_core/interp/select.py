"""Which features to explain: `--features N` (spread over density), a list of ids, or all; dead ones never."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..features.reader import FeatureStore

MIN_FIRES = 8
"""A count of features is drawn from those that fired at least this often: rarer ones leave no held-out contexts to score."""


def select_features(store: FeatureStore, saes: str | None, spec: str) -> tuple[list[tuple[str, int]], list[str]]:
    """`([(SAE short name, feature)…] in SAE then feature order, notes)`; the notes say what was left out and why.

    `spec` is `all` (every live feature), a count N (per SAE: N features at evenly spaced ranks of firing density
    among those that fired at least `MIN_FIRES` times, so rare and common features are both represented), or ids:
    `12,40` (in every chosen SAE) or `L14R:12,L2R:7`.
    """
    names = [s.strip() for s in saes.split(",") if s.strip()] if saes else list(store.saes().short_name)
    shorts = [store.sae(store.sae_id(n))["short_name"] for n in names]
    spec = str(spec).strip()
    notes: list[str] = []
    chosen: list[tuple[str, int]] = []
    if spec.lower() == "all" or spec.isdigit():
        for short in shorts:
            live = store.live_features(short, 1 if spec.lower() == "all" else MIN_FIRES)  # sorted by density
            if spec.lower() == "all" or int(spec) >= len(live):
                picked = live
            else:
                ranks = np.unique(np.linspace(0, len(live) - 1, int(spec)).round().astype(int))
                picked = [live[r] for r in ranks]
            chosen += [(short, f) for f in sorted(picked)]
        if spec.isdigit() and int(spec) == 0:
            raise UserError("--features 0 selects nothing; give a count of at least 1, ids such as 12,40, or all")
        return chosen, notes
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        sae_part, _, id_part = item.rpartition(":")
        if not id_part.isdigit():
            raise UserError(f"cannot read {item!r} in --features; write a count (20), ids (12,40 or L14R:12) or all")
        targets = [store.sae(store.sae_id(sae_part))["short_name"]] if sae_part else shorts
        for short in targets:
            d_sae = int(store.sae(short)["d_sae"])
            feature = int(id_part)
            if feature >= d_sae:
                raise UserError(f"{short} has no feature {feature}; its features are 0 … {d_sae - 1}")
            if store.is_dead(short, feature):
                notes.append(f"{short} feature {feature} never fired on the precompute tokens: nothing to explain")
            else:
                chosen.append((short, feature))
    order = {s: i for i, s in enumerate(store.saes().short_name)}
    return sorted(set(chosen), key=lambda t: (order[t[0]], t[1])), notes

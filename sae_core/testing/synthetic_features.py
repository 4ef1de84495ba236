"""A schema-valid features.duckdb of any size with random but realistic rows, for benchmarks and tests.

Realistic means the real file's shapes: a vocabulary of subword strings, labels of five tokens,
log-normal densities, 50-bin histograms, top and interval examples whose windows are mostly zero
with a peak on the example's token, ten logit effects each way, ten neighbours of each kind, a 384-d
int8 sentence vector per live feature (random, around a few hundred topics) and, for a share of the
features, an explanation with scores and its own vector.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from .. import __version__
from ..features.labels import DEAD_LABEL
from ..features.schema import METRIC_COLUMNS, sae_identity
from ..features.vector_index import quantize
from ..features.writer import FeatureDBWriter, list_array


def synthetic_vocab(size: int, rng: np.random.Generator) -> list[str]:
    """Subword-like strings, a third of them with a leading space, all distinct."""
    letters = np.array(list(string.ascii_lowercase))
    vocab, seen = [], set()
    while len(vocab) < size:
        word = "".join(rng.choice(letters, rng.integers(2, 9)))
        word = (" " + word) if rng.random() < 0.33 else word
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    return vocab


def build_synthetic(
    path: str | Path,
    *,
    n_saes: int = 64,
    d_sae: int = 16_384,
    n_layers: int = 32,
    vocab_size: int = 49_152,
    n_contexts: int = 8_192,
    context_size: int = 128,
    n_top: int = 20,
    n_intervals: int = 5,
    per_interval: int = 4,
    window: int = 16,
    explained_fraction: float = 0.05,
    vector_dim: int = 384,
    seed: int = 0,
) -> Path:
    """Write a synthetic features.duckdb at `path` (atomically) and return the path."""
    rng = np.random.default_rng(seed)
    vocab = synthetic_vocab(vocab_size, rng)
    sites = ("resid_post", "mlp_out", "attn_out")
    width = 2 * window + 1
    per_feature = n_top + n_intervals * per_interval
    topics = rng.standard_normal((256, vector_dim)).astype(np.float32)
    with FeatureDBWriter(path) as db:
        db.insert("vocab", {"token_id": np.arange(vocab_size, dtype=np.int32), "token": vocab})
        contexts = rng.integers(0, vocab_size, (n_contexts, context_size), dtype=np.int32)
        db.insert("contexts", {"context_id": np.arange(n_contexts, dtype=np.int32), "token_ids": list_array(contexts, dtype=pa.int32())})
        for sae_id in tqdm(range(n_saes), desc="synthetic SAEs", unit="SAE", file=sys.stderr, dynamic_ncols=True):
            layer, site = sae_id // len(sites) % n_layers, sites[sae_id % len(sites)]
            short = f"L{layer}{site[0].upper() if site != 'resid_post' else 'R'}"
            identity = sae_identity(sae_id, f"blocks.{layer}.hook_{site}", short, layer, site)
            db.insert("saes", {
                **identity, "architecture": ["topk"], "d_in": [2048], "d_sae": [d_sae], "k": [64], "folder": [None],
                "n_tokens": [n_contexts * context_size], "l0_precompute": [64.0], "dead_fraction_precompute": [0.01],
                **{m: [None] for m in METRIC_COLUMNS}, "fvu": [float(rng.uniform(0.1, 0.3))], "l0": [64.0],
                "dead_fraction": [0.01], "dense_fraction": [0.0], "ce_loss_recovered": [float(rng.uniform(0.85, 0.99))],
                "metrics": [None],
            })
            dead = _insert_features(db, rng, sae_id, d_sae, vocab, n_contexts, context_size, per_feature, n_top, n_intervals, width, window)
            _insert_understanding(db, rng, sae_id, dead, vocab, topics, explained_fraction)
            db.insert("site_summary", {
                **identity, "d_sae": [d_sae], "n_tokens": [n_contexts * context_size], "alive": [d_sae], "dead_fraction": [0.0],
                "l0": [64.0], "density_p10": [1e-4], "density_median": [1e-3], "density_p90": [1e-2], "max_act_median": [10.0],
                "log10_density_edges": [np.linspace(-7, 0, 29).tolist()], "log10_density_counts": [[0] * 28],
            })
        db.finish({
            "model": "synthetic", "corpus": "synthetic", "split": "eval", "tokens": n_contexts * context_size,
            "contexts": n_contexts, "context_size": context_size, "sae_explorer_version": __version__, "synthetic": True,
            "embedder": {"name": "synthetic", "dim": vector_dim}, "created": "synthetic",
        })
    return Path(path)


def _insert_features(
    db: FeatureDBWriter, rng: np.random.Generator, sae_id: int, d_sae: int, vocab: list[str], n_contexts: int,
    context_size: int, per_feature: int, n_top: int, n_intervals: int, width: int, window: int,
) -> np.ndarray:
    vocab_size = len(vocab)
    feature = np.arange(d_sae, dtype=np.int32)
    ids = np.full(d_sae, sae_id, dtype=np.int32)
    density = np.clip(rng.lognormal(np.log(1e-3), 1.5, d_sae), 0, 1)
    dead = rng.random(d_sae) < 0.01
    density[dead] = 0
    max_act = np.where(dead, 0, rng.gamma(4, 3, d_sae)).astype(np.float32)
    hist = rng.multinomial(1000, np.geomspace(1, 1e-3, 50) / np.geomspace(1, 1e-3, 50).sum(), d_sae).astype(np.int32)
    top_tokens = rng.integers(0, vocab_size, (d_sae, 10), dtype=np.int32)
    top_logits = rng.integers(0, vocab_size, (d_sae, 10), dtype=np.int32)
    labels = [
        DEAD_LABEL if dead[f] else " ".join(f'"{vocab[t].strip()}"' for t in top_tokens[f, :3]) + " → "
        + " ".join(f'"{vocab[t].strip()}"' for t in top_logits[f, :2])
        for f in range(d_sae)
    ]
    db.insert("features", {
        "sae_id": ids, "feature": feature, "fires": (density * n_contexts * context_size).astype(np.int64),
        "density": density, "max_act": max_act, "mean_act": max_act / 3, "dead": dead, "hist_max": max_act,
        "hist_counts": list_array(hist, dtype=pa.int32()),
        "top_logit_ids": list_array(top_logits, dtype=pa.int32()),
        "top_logit_values": list_array(np.sort(rng.random((d_sae, 10), dtype=np.float32), 1)[:, ::-1].copy()),
        "bottom_logit_ids": list_array(rng.integers(0, vocab_size, (d_sae, 10), dtype=np.int32), dtype=pa.int32()),
        "bottom_logit_values": list_array(-np.sort(rng.random((d_sae, 10), dtype=np.float32), 1)[:, ::-1].copy()),
        "top_token_ids": list_array(top_tokens, dtype=pa.int32()),
        "label": labels,
        "label_lower": [label.lower() for label in labels],
    })
    n = d_sae * per_feature
    kind = np.tile(np.r_[np.zeros(n_top), np.repeat(np.arange(1, n_intervals + 1), (per_feature - n_top) // n_intervals)], d_sae)
    rank = np.tile(np.r_[np.arange(n_top), np.tile(np.arange((per_feature - n_top) // n_intervals), n_intervals)], d_sae)
    position = rng.integers(1, context_size, n)
    start = np.clip(position - window, 0, context_size - width)
    acts = np.where(rng.random((n, width)) < 0.2, rng.random((n, width), dtype=np.float32) * 5, 0).astype(np.float32)
    activation = np.repeat(np.maximum(max_act, 0.1), per_feature) * rng.uniform(0.2, 1.0, n).astype(np.float32)
    acts[np.arange(n), position - start] = activation
    db.insert("examples", {
        "sae_id": np.full(n, sae_id, dtype=np.int32), "feature": np.repeat(feature, per_feature), "kind": kind.astype(np.int8),
        "rank": rank.astype(np.int16), "context_id": rng.integers(0, n_contexts, n, dtype=np.int32),
        "position": position.astype(np.int16), "activation": activation.astype(np.float32),
        "window_start": start.astype(np.int16), "acts": list_array(acts),
    })
    neighbours = rng.integers(0, d_sae, (d_sae, 10), dtype=np.int32)
    scores = np.sort(rng.random((d_sae, 10), dtype=np.float32), 1)[:, ::-1].copy()
    for kind_name, counts in (("decoder_cosine", None), ("coactivation", rng.integers(1, 1000, (d_sae, 10), dtype=np.int32))):
        db.insert("neighbours", {
            "sae_id": ids, "feature": feature, "kind": [kind_name] * d_sae,
            "ids": list_array(neighbours, dtype=pa.int32()), "scores": list_array(scores),
            "counts": list_array(counts, dtype=pa.int32()) if counts is not None else pa.nulls(d_sae, pa.list_(pa.int32())),
        })
    return dead


def _vectors(rng: np.random.Generator, topics: np.ndarray, n: int) -> tuple[np.ndarray, pa.Array]:
    """`n` unit vectors near random topics, quantised: (scales, int8 list array)."""
    v = topics[rng.integers(0, len(topics), n)] + rng.standard_normal((n, topics.shape[1])).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    scales, q = quantize(v)
    return scales, list_array(q, dtype=pa.int8())


def _insert_understanding(db: FeatureDBWriter, rng: np.random.Generator, sae_id: int, dead: np.ndarray, vocab: list[str],
                          topics: np.ndarray, explained_fraction: float) -> None:
    """Example vectors for live features; explanations (with scores and vectors) for a random share of them."""
    live = np.flatnonzero(~dead).astype(np.int32)
    scales, vectors = _vectors(rng, topics, len(live))
    db.insert("feature_vectors", {"sae_id": np.full(len(live), sae_id, np.int32), "feature": live,
                                  "source": ["examples"] * len(live), "scale": scales, "vector": vectors})
    explained = np.sort(rng.choice(live, int(len(live) * explained_fraction), replace=False)).astype(np.int32)
    n = len(explained)
    if not n:
        return
    texts = [f"Tokens such as{''.join(vocab[t] for t in rng.integers(0, len(vocab), 3))} in{vocab[rng.integers(len(vocab))]} contexts"
             for _ in range(n)]
    scores = {name: rng.uniform(0.4, 0.95, n) for name in ("detection", "fuzzing", "embedding")}
    baselines = {f"{name}_{b}": rng.uniform(0.4, 0.7, n) for name in ("detection", "fuzzing", "embedding") for b in ("shuffled", "handle")}
    db.insert("explanations", {
        "sae_id": np.full(n, sae_id, np.int32), "feature": explained, "explanation": texts,
        "explanation_lower": [t.lower() for t in texts], "explainer": ["synthetic"] * n, "scorer": ["synthetic"] * n,
        "created": ["2026-01-01T00:00:00+00:00"] * n, "current": np.ones(n, bool), **scores, **baselines,
        "n_activating": np.full(n, 8, np.int32), "n_non_activating": np.full(n, 8, np.int32), "details": ["{}"] * n,
    })
    scales, vectors = _vectors(rng, topics, n)
    db.insert("feature_vectors", {"sae_id": np.full(n, sae_id, np.int32), "feature": explained,
                                  "source": ["explanation"] * n, "scale": scales, "vector": vectors})

"""Embed every feature for search by meaning: its top-example contexts, and its explanation when it has one.

A feature's *examples* vector embeds one text: the snippets of ±`half_width` tokens around the peaks of
its `n_examples` strongest contexts, joined by " … ". Its *explanation* vector embeds the newest
explanation. Both go into `feature_vectors` as int8 (`vector_index.quantize`), with the embedder's name
in `meta` so that queries are embedded by the same model.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from ..options import device_option, option
from .amend import amend_each, set_meta
from .vector_index import quantize
from .writer import insert_columns

N_EXAMPLES = 4
HALF_WIDTH = 6


@dataclass(frozen=True)
class EmbedOptions:
    """The options of `sae-explorer embed`: which model, and how much of each feature goes into its text."""

    embedder: str | None = option(None, "a sentence-transformers folder (default: the embedded all-MiniLM-L6-v2)")
    examples: int = option(N_EXAMPLES, "top examples per feature in its text")
    window: int = option(HALF_WIDTH, "tokens on each side of an example's peak")
    batch_size: int = option(64, "texts per batch")
    device: str = device_option()


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def file_vocab(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Display string of every token id, from the file's `vocab` table."""
    return [t for (t,) in con.execute("SELECT token FROM vocab ORDER BY token_id").fetchall()]


def example_texts(con: duckdb.DuckDBPyConnection, sae_id: int, n_examples: int = N_EXAMPLES, half_width: int = HALF_WIDTH,
                  vocab: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """`(features, texts)`: the text embedded for each feature of one SAE that has top examples."""
    vocab = vocab if vocab is not None else file_vocab(con)
    rows = con.execute(
        """SELECT e.feature, list_slice(c.token_ids, greatest(e.position - ?, 0) + 1, e.position + ? + 1) AS ids
           FROM examples e JOIN contexts c ON c.context_id = e.context_id
           WHERE e.sae_id = ? AND e.kind = 0 AND e.rank < ? ORDER BY e.feature, e.rank""",
        [half_width, half_width, int(sae_id), int(n_examples)],
    ).fetchall()
    features: list[int] = []
    texts: list[str] = []
    for feature, ids in rows:
        snippet = "".join(vocab[t] for t in ids).replace("\n", " ").strip()
        if features and features[-1] == feature:
            texts[-1] += " … " + snippet
        else:
            features.append(int(feature))
            texts.append(snippet)
    return np.asarray(features, dtype=np.int32), texts


def current_explanations(con: duckdb.DuckDBPyConnection) -> list[tuple[int, int, str]]:
    """`(sae_id, feature, explanation)` of the newest explanation of every explained feature."""
    return con.execute(
        "SELECT sae_id, feature, explanation FROM explanations WHERE current AND explanation <> '' ORDER BY sae_id, feature"
    ).fetchall()


def write_vectors(con: duckdb.DuckDBPyConnection, source: str, sae_ids: np.ndarray, features: np.ndarray, vectors: np.ndarray,
                  *, replace: bool = True) -> None:
    """Write the `source` vectors of these features (replacing those they had, unless `replace` is off)."""
    if not len(features):
        return
    if replace:
        keys = pa.table({"sae_id": pa.array(sae_ids, pa.int32()), "feature": pa.array(features, pa.int32())})
        con.register("_keys", keys)
        try:
            con.execute("DELETE FROM feature_vectors v USING _keys k WHERE v.source = ? AND v.sae_id = k.sae_id "
                        "AND v.feature = k.feature", [source])
        finally:
            con.unregister("_keys")
    scales, q = quantize(vectors)
    dim = q.shape[1]
    offsets = np.arange(0, len(q) * dim + 1, dim, dtype=np.int32)
    insert_columns(con, "feature_vectors", {
        "sae_id": np.asarray(sae_ids, dtype=np.int32), "feature": np.asarray(features, dtype=np.int32),
        "source": [source] * len(features), "scale": scales,
        "vector": pa.ListArray.from_arrays(pa.array(offsets), pa.array(q.reshape(-1), type=pa.int8())),
    })


def embed_features(con: duckdb.DuckDBPyConnection, embedder: Embedder, *, n_examples: int = N_EXAMPLES,
                   half_width: int = HALF_WIDTH, batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Embed every feature of the open file (examples, then current explanations); returns counts and settings."""
    vocab = file_vocab(con)
    sae_ids = [int(s) for (s,) in con.execute("SELECT sae_id FROM saes ORDER BY sae_id").fetchall()]
    n_features = con.execute("SELECT count(*) FROM features WHERE NOT dead").fetchone()[0]
    counts = {"examples": 0, "explanation": 0}
    # everything is embedded anew: free the old vectors' blocks first, so the file reuses them instead of growing
    con.execute("DELETE FROM feature_vectors")
    con.execute("CHECKPOINT")
    with tqdm(total=n_features, desc="embedding features", unit="feature", file=sys.stderr, dynamic_ncols=True,
              disable=not progress) as bar:
        for sae_id in sae_ids:
            features, texts = example_texts(con, sae_id, n_examples, half_width, vocab)
            for start in range(0, len(texts), 1024):  # write as we go: memory stays one block of vectors
                block = slice(start, start + 1024)
                vectors = embedder.embed(texts[block], batch_size=batch_size)
                write_vectors(con, "examples", np.full(len(vectors), sae_id, dtype=np.int32), features[block], vectors,
                              replace=False)
                bar.update(len(vectors))
            counts["examples"] += len(texts)
    counts["explanation"] = embed_explanations(con, embedder, batch_size=batch_size, replace=False)
    settings = {"name": embedder.name, "dim": embedder.dim, "n_examples": n_examples, "half_width": half_width}
    set_meta(con, {"embedder": settings})
    return {**counts, **settings}


def embed_explanations(con: duckdb.DuckDBPyConnection, embedder: Embedder, keys: set[tuple[int, int]] | None = None,
                       batch_size: int = 64, replace: bool = True) -> int:
    """(Re-)embed the current explanation of every explained feature (or only of `keys`); returns how many."""
    rows = [r for r in current_explanations(con) if keys is None or (r[0], r[1]) in keys]
    if rows:
        vectors = embedder.embed([r[2] for r in rows], batch_size=batch_size)
        write_vectors(con, "explanation", np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), vectors, replace=replace)
    return len(rows)


def file_embedder(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The embedder settings recorded in the file (None before anything was embedded)."""
    row = con.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
    return json.loads(row[0]) if row else None


def embed_run(path: str | Path, embedder: Embedder, *, log: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """`sae-explorer embed`: embed every feature of a run's feature file, in place and atomically."""
    result: dict[str, Any] = {}

    def write(con: duckdb.DuckDBPyConnection, _: list[int]) -> None:
        done = embed_features(con, embedder, **options)
        result.update({**done, **{k: result.get(k, 0) + done[k] for k in ("examples", "explanation")}})

    amend_each(path, write)  # the run's one feature file, or each part of a split store
    if log:
        log(f"embedded {result['examples']:,} features' examples and {result['explanation']:,} explanations with {embedder.name}")
    return result

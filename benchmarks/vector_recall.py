"""Recall of search by meaning through the IVF-PQ index against the exact search, on a real feature file.

Copies the file to a temporary folder, builds its vector index with the IVF-PQ part whatever its size
(`ann_min_rows=0`; below 400,000 vectors the app itself searches exactly), then runs queries through both:
30 noisy copies of the file's own vectors (Gaussian noise, σ = 0.03 per dimension, renormalised) and 20
phrases embedded by the file's embedder. recall@k: the share of the exact search's top k features that the
index also returns in its top k. Also prints the latency of each (warm: the second pass over a query's rows
reads them from the page cache).

    python benchmarks/vector_recall.py runs/suite-gemma3
    python benchmarks/vector_recall.py /tmp/sae-explorer-bench/synthetic-64x16384.duckdb --keep-index --rerank 4 8 16
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sae_core.features import vector_index
from sae_core.features.amend import feature_file
from sae_core.features.ann_index import build_vector_index, vector_index_info
from sae_core.features.reader import FeatureStore
from sae_core.model.sentence_embedder import load_embedder

PHRASES = ["legal documents", "cooking recipes", "programming code in Python", "negative sentiment", "dates and years",
           "names of cities", "French words", "medicine and disease", "sports results", "music and songs", "numbers",
           "questions", "the end of a sentence", "family members", "money and prices", "weather", "emotions",
           "computers", "history and wars", "animals"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder or feature file with feature vectors")
    parser.add_argument("--keep-index", action="store_true",
                        help="use the file in place with the vector index it has (the file must have ≥ 400k vectors)")
    parser.add_argument("--rerank", type=int, nargs="+", default=[vector_index.RERANK],
                        help="candidates re-scored per wanted row (several: one line each)")
    parser.add_argument("--probe-fraction", type=int, default=vector_index.PROBED_FRACTION,
                        help="visit one in this many inverted lists")
    args = parser.parse_args()
    vector_index.PROBED_FRACTION = args.probe_fraction
    source = feature_file(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep_index:
            path = source
        else:
            path = Path(tmp) / "features.duckdb"
            shutil.copy(source, path)
            build_vector_index(path, ann_min_rows=0)
        info = vector_index_info(path.with_name(path.stem + ".vectors"))
        store, exact = FeatureStore(path), FeatureStore(path)
        exact.__dict__["_vector_index"] = (exact._vector_index_from_file(), "exact")
        index = store.vector_index
        assert index.ann is not None, "the vector index has no IVF-PQ part"
        rng = np.random.default_rng(0)
        rows = rng.choice(len(index), 30, replace=False)
        noisy = index.vectors[rows].astype(np.float32) * index.scales[rows, None] + rng.normal(0, 0.03, (30, index.dim))
        queries = [*(noisy / np.linalg.norm(noisy, axis=1, keepdims=True)), *load_embedder().embed(PHRASES)]
        vector_index.EXACT_MAX_ROWS = 0  # every search through the index, as in a file of millions
        truths, exact_times = [], []
        for query in queries:
            start = time.perf_counter()
            truths.append(exact.vector_index.search(query, limit=100))
            exact_times.append(time.perf_counter() - start)
        print(f"{source}: {info['rows']:,} vectors, IVF-PQ over {info['nlist']:,} lists, "
              f"{max(32, info['nlist'] // vector_index.PROBED_FRACTION)} visited; {len(queries)} queries; "
              f"exact search p50 {1000 * statistics.median(exact_times):.1f} ms")
        for rerank in args.rerank:
            vector_index.RERANK = rerank
            recall: dict[int, list[float]] = {10: [], 100: []}
            times = []
            for query, truth in zip(queries, truths):
                start = time.perf_counter()
                found = index.search(query, limit=100)
                times.append(time.perf_counter() - start)
                for k, values in recall.items():
                    wanted = set(zip(truth.sae_id[:k], truth.feature[:k]))
                    values.append(len(wanted & set(zip(found.sae_id[:k], found.feature[:k]))) / len(wanted))
            print(f"re-scoring {rerank} candidates per wanted row: " + ", ".join(
                f"recall@{k} {statistics.mean(v):.3f} (worst query {min(v):.2f})" for k, v in recall.items())
                + f"; p50 {1000 * statistics.median(times):.1f} ms")
        store.close()
        exact.close()


if __name__ == "__main__":
    main()

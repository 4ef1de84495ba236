"""Query latency of features.duckdb at the paper's scale: a synthetic file with 1,048,576 features.

Builds (once, or with --rebuild) a schema-valid file of 64 SAEs × 16,384 features with realistic
example rows (20 top + 5 intervals × 4 per feature, ±16-token windows), then times through the
reader API what the app does: everything one feature page needs (the queries alone, then the
queries plus the page's figure, shaded-example HTML and tables, i.e. the Features page's server-side
work, now with its "features like this one" table), a label search, a token search, an explanation search, a search by
meaning (the query embedded by the real all-MiniLM-L6-v2, then searched through the vector index), and a sorted, filtered
feature list. Prints p50 / p95 latencies, the file size and build time, the time from opening the file to the first
feature page drawn, and the process's memory after browsing (resident, and of it anonymous: what the page cache cannot
take back).

Label, token and explanation searches run twice per query, through the search index
(`features.search.sqlite`) and by scanning the DuckDB file as before, in alternating order, and must
return the same rows; the table gives both and their ratio. Search by meaning runs through the vector index
(`features.vectors/`: IVF-PQ candidates re-scored exactly) and, as its baseline, with every vector loaded into memory
and scored; recall@10 and @100 say how many of the exact search's features the index found.

    python benchmarks/feature_db_queries.py                      # 64 × 16,384 features (1M)
    python benchmarks/feature_db_queries.py --preset qwen3-1.7b  # 84 × 65,536 (5.5M): one Qwen3-1.7B suite
    python benchmarks/feature_db_queries.py --saes 4 --d-sae 1024  # quick smoke test
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from explorer.explanation_view import score_table, similar_table
from explorer.feature_view import example_groups, histogram_svg, logit_table, neighbour_table, summary_line
from sae_core.features.ann_index import build_vector_index, vector_index_info, vectors_path
from sae_core.features.reader import FeatureStore
from sae_core.features.search_index import build_search_index, index_path
from sae_core.model.sentence_embedder import load_embedder
from sae_core.testing.synthetic_features import build_synthetic

PRESETS = {"1m": (64, 16_384), "qwen3-1.7b": (84, 65_536), "paper": (300, 65_536)}
"""(SAEs, d_sae): 1M features; one Qwen3-1.7B suite at 65,536 latents (28 layers × 3 sites: 5.5M); the paper's
three models at 65,536 latents and every site of 28 + 36 + 36 layers (19.7M)."""
SEARCHES = ("label search", "token search", "explanation search")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


def memory_mib() -> dict[str, float]:
    """Resident memory of this process (all; anonymous: what only swap could take back; file-backed: mapped files and
    libraries, which the OS can drop and read again) and its peak, in MiB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM") if k in fields}


def drop_page_cache() -> bool:
    """Empty the OS page cache, so the next reads come from disk (Linux, as root); whether it worked."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        print(f"cannot drop the page cache ({e}): no cold figures")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, help="a size named for the paper's models (sets --saes, --d-sae)")
    parser.add_argument("--saes", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=16_384)
    parser.add_argument("--no-scan", action="store_true", help="skip the scanning baseline of the searches")
    parser.add_argument("--path", help="where the synthetic file goes (default: a temp folder, kept for reruns); or a split "
                        "store's features/ folder (`sae-explorer split` of such a file)")
    parser.add_argument("--rebuild", action="store_true", help="build the file again even if it exists")
    parser.add_argument("--pages", type=int, default=200, help="random feature pages to fetch")
    parser.add_argument("--searches", type=int, default=50, help="random label / token searches")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB and torch threads (the machine has 2 cores)")
    parser.add_argument("--cold", action="store_true",
                        help="drop the OS page cache first (Linux, as root) and time opening and the first pages cold")
    args = parser.parse_args()
    if args.preset:
        args.saes, args.d_sae = PRESETS[args.preset]
    torch.set_num_threads(args.threads)
    path = Path(args.path or Path(tempfile.gettempdir()) / "sae-explorer-bench" / f"synthetic-{args.saes}x{args.d_sae}.duckdb")

    if args.rebuild or not path.exists():
        start = time.perf_counter()
        build_synthetic(path, n_saes=args.saes, d_sae=args.d_sae)
        print(f"built {path} in {time.perf_counter() - start:.0f} s")
    size = sum(p.stat().st_size for p in path.glob("*.duckdb")) if path.is_dir() else os.path.getsize(path)  # a split store: its parts
    store = FeatureStore(path)
    if store.search_index_problem:
        store.close()
        start = time.perf_counter()
        build_search_index(path)
        print(f"built the search index in {time.perf_counter() - start:.0f} s")
        store = FeatureStore(path)
    if store.vector_index_problem:
        store.close()
        start = time.perf_counter()
        build_vector_index(path)
        print(f"built the vector index in {time.perf_counter() - start:.0f} s")
    store.close()
    rng = random.Random(0)
    cold = args.cold and drop_page_cache()
    start = time.perf_counter()
    store = FeatureStore(path)
    store.feature(0, 0)
    open_s = time.perf_counter() - start
    cold_pages = []
    for _ in range(20 if cold else 0):
        sae, feature = rng.randrange(args.saes), rng.randrange(args.d_sae)
        start = time.perf_counter()
        store.feature(sae, feature)
        cold_pages.append(time.perf_counter() - start)
    info = vector_index_info(vectors_path(path))
    print(f"search index {index_path(path).stat().st_size / 2**30:.2f} GiB; vector index {info['bytes'] / 2**30:.2f} GiB "
          f"({info['rows']:,} vectors, " + (f"IVF-PQ over {info['nlist']:,} lists)" if "nlist" in info else "searched exactly)"))
    store._con.execute(f"SET threads = {args.threads}")
    scanning = FeatureStore(path)
    scanning._con.execute(f"SET threads = {args.threads}")
    scanning.__dict__["_search_index"] = (None, "the scanning baseline")
    n_features = int(store.saes().d_sae.sum())
    print(f"{path}: {n_features:,} features in {args.saes} SAEs, {size / 2**30:.2f} GiB, "
          f"{store._rows('SELECT count(*) FROM examples')[0][0]:,} example rows, {args.threads} threads")
    print(f"open to first feature page{' (page cache dropped)' if cold else ''}: {open_s:.2f} s")
    if cold_pages:
        print("the next 20 feature pages, cold: p50 / p95 {:.1f} / {:.1f} ms".format(*percentiles(cold_pages)))
    start = time.perf_counter()
    n_vectors = len(store.vector_index)
    print(f"vector index opened in {time.perf_counter() - start:.2f} s ({n_vectors:,} vectors memory-mapped)")
    if not args.no_scan:
        start = time.perf_counter()
        scanning.__dict__["_vector_index"] = (scanning._vector_index_from_file(), "the exact baseline")
        print(f"exact baseline: {n_vectors:,} vectors loaded into memory in {time.perf_counter() - start:.2f} s "
              f"({scanning.vector_index.vectors.nbytes / 2**20:.0f} MiB int8)")
    embedder = load_embedder()
    queries = ["legal documents", "numbers with thousands separators", "cooking and recipes", "programming code in Python",
               "negative sentiment", "dates and years", "names of cities", "the end of a sentence", "French words", "medicine"]

    timings: dict[str, list[float]] = {"feature page (all of it)": [], "+ figures, HTML, similar features": [],
                                       **{name: [] for name in SEARCHES}, **{f"{name} (scan)": [] for name in SEARCHES},
                                       "search by meaning": [], "  of which embedding the query": [],
                                       "search by meaning (exact, in memory)": [], "sorted list (100 rows)": []}
    recall: dict[int, list[float]] = {10: [], 100: []}
    for _ in range(args.pages):
        sae, feature = rng.randrange(args.saes), rng.randrange(args.d_sae)
        start = time.perf_counter()
        page = store.feature(sae, feature)
        timings["feature page (all of it)"].append(time.perf_counter() - start)
        assert len(page.examples) and len(page.neighbours)
        start = time.perf_counter()
        page = store.feature(sae, feature)
        short = page.sae["short_name"]
        summary_line(page), histogram_svg(page), example_groups(page)
        logit_table(page.top_logits), logit_table(page.bottom_logits)
        [neighbour_table(frame, short) for frame in page.neighbours.values()]
        if not page.explanations.empty:
            score_table(page.explanations.iloc[0].to_dict())
        similar_table(store.similar_features(sae, feature, limit=10))
        timings["+ figures, HTML, similar features"].append(time.perf_counter() - start)
    for _ in range(args.searches):
        word = rng.choice(store.vocab).strip()
        text = word[: rng.randint(2, max(2, len(word)))]
        for name, method, query in (("label search", "search_label", text), ("token search", "search_token", word),
                                    ("explanation search", "search_explanation", text)):
            runs = [(store, name)] + ([] if args.no_scan else [(scanning, f"{name} (scan)")])
            found = []
            for reader, key in runs if rng.random() < 0.5 else runs[::-1]:
                start = time.perf_counter()
                found.append(getattr(reader, method)(query))
                timings[key].append(time.perf_counter() - start)
            if len(found) == 2:
                pd.testing.assert_frame_equal(found[0], found[1], check_dtype=False, obj=f"{name} {query!r}")  # index = scan
        start = time.perf_counter()
        vector = embedder.embed([rng.choice(queries) + " " + word])[0]
        timings["  of which embedding the query"].append(time.perf_counter() - start)
        found = store.search_by_vector(vector, limit=100)
        timings["search by meaning"].append(time.perf_counter() - start)
        if not args.no_scan:
            start = time.perf_counter()
            exact = scanning.search_by_vector(vector, limit=100)
            timings["search by meaning (exact, in memory)"].append(time.perf_counter() - start + timings["  of which embedding the query"][-1])
            for k in recall:
                truth = set(zip(exact.sae_id[:k], exact.feature[:k]))
                recall[k].append(len(truth & set(zip(found.sae_id[:k], found.feature[:k]))) / max(1, len(truth)))
        start = time.perf_counter()
        store.list_features(saes=[rng.randrange(args.saes)], min_density=1e-4, sort_by="max_act", limit=100)
        timings["sorted list (100 rows)"].append(time.perf_counter() - start)

    print(f"\n{'query':<34} {'p50 ms':>8} {'p95 ms':>8}  runs")
    for key, values in timings.items():
        if values:
            p50, p95 = percentiles(values)
            print(f"{key:<34} {p50:>8.1f} {p95:>8.1f}  {len(values)}")
    if not args.no_scan:
        print("search by meaning through the index: " + ", ".join(
            f"recall@{k} {statistics.mean(v):.3f} (worst query {min(v):.2f})" for k, v in recall.items()))
    if args.no_scan:  # the baselines hold every vector in memory: the app's figure is without them
        print("memory after browsing: " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in memory_mib().items()))
    for name in SEARCHES if not args.no_scan else ():
        ratios = [s / i for s, i in zip(timings[f"{name} (scan)"], timings[name])]
        print(f"{name}: the scan takes {statistics.median(ratios):.1f}× as long as the index (median of per-query ratios)")


if __name__ == "__main__":
    main()

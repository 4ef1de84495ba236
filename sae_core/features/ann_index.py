"""The vector index beside a feature file (`features.vectors/`): search by meaning without loading every
vector into memory, and without scoring every vector at millions of features.

The folder holds the file's feature vectors as memory-mapped NumPy arrays in (sae_id, feature, source)
order (`keys.npy`, `sources.npy`, `scales.npy`, int8 `vectors.npy`) and, from `ANN_MIN_ROWS` vectors up, a
faiss IVF-PQ index over them (`ivfpq.faiss`: √N inverted lists, one byte per 8 dimensions, i.e. 48 bytes
for a 384-d vector: 1.1 GB for 20M vectors, memory-mapped too). A search asks the IVF-PQ index for
candidates and re-scores them exactly from the int8 rows (`vector_index.VectorIndex`); opening it maps
the files, instead of loading 400 MB per million vectors out of DuckDB.

Like the search index it records the feature file's identity; a reader that finds it missing or stale
says so and loads the vectors from the feature file (exact search, all in memory). Every writer of
feature files rebuilds it. The `.faiss` file is faiss's own binary format (no pickle): a cache this
project writes, rebuilt from the feature file, never a file to accept from others.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import duckdb
import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from ..io import atomic_folder
from .parts import open_store
from .schema import file_identity
from .vector_index import SOURCES, VectorIndex, feature_keys

INDEX_VERSION = 1
ANN_MIN_ROWS = 400_000
"""Files with fewer vectors get no IVF-PQ index: scoring all of them exactly takes ~20 ms."""
_BATCH = 131_072
ARRAYS = ("keys", "sources", "scales", "vectors")


def vectors_path(db_path: str | Path) -> Path:
    """Where the vector index of a feature file lives: `features.duckdb` → `features.vectors/`."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".vectors")


def faiss_available() -> bool:
    """Whether faiss (the `faiss-cpu` package) imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build_vector_index(db_path: str | Path, *, ann_min_rows: int = ANN_MIN_ROWS) -> Path:
    """Build (or rebuild) the vector index of a feature file; written to a temporary folder and swapped in."""
    db_path = Path(db_path)
    out = vectors_path(db_path)
    with atomic_folder(out) as tmp:
        with open_store(db_path)[0] as con:
            n, dim = _write_arrays(con, tmp)
            meta = {"index_version": INDEX_VERSION, "content_id": file_identity(db_path, con), "rows": n, "dim": dim}
        if n >= ann_min_rows and faiss_available():
            meta["ann"] = _write_ann(tmp, n, dim)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _write_arrays(con: duckdb.DuckDBPyConnection, folder: Path) -> tuple[int, int]:
    """Stream `feature_vectors` in key order into memory-mapped `.npy` files; `(rows, dim)`."""
    n = int(con.cursor().execute("SELECT count(*) FROM feature_vectors").fetchall()[0][0])
    row = (con.cursor().execute("SELECT len(vector) FROM feature_vectors LIMIT 1").fetchall() or [None])[0]
    dim = int(row[0]) if row else 0
    arrays = {"keys": open_memmap(folder / "keys.npy", "w+", np.int64, (n,)),
              "sources": open_memmap(folder / "sources.npy", "w+", np.int8, (n,)),
              "scales": open_memmap(folder / "scales.npy", "w+", np.float32, (n,)),
              "vectors": open_memmap(folder / "vectors.npy", "w+", np.int8, (n, dim))}
    reader = con.cursor().sql("SELECT sae_id, feature, source, scale, vector FROM feature_vectors "
                     "ORDER BY sae_id, feature, source").to_arrow_reader(_BATCH)
    start = 0
    with tqdm(total=n, desc="vector index: rows", unit="row", unit_scale=True, file=sys.stderr, leave=False) as bar:
        for batch in reader:
            end = start + batch.num_rows
            arrays["keys"][start:end] = feature_keys(batch.column("sae_id").to_numpy(), batch.column("feature").to_numpy())
            arrays["sources"][start:end] = [SOURCES.index(s) for s in batch.column("source").to_pylist()]
            arrays["scales"][start:end] = batch.column("scale").to_numpy()
            arrays["vectors"][start:end] = batch.column("vector").flatten().to_numpy().reshape(-1, dim)
            start = end
            bar.update(batch.num_rows)
    for array in arrays.values():
        array.flush()
    return n, dim


def _write_ann(folder: Path, n: int, dim: int) -> dict[str, int]:
    """Train an IVF-PQ index on a sample of the rows, add every row (its id is its row number), save it."""
    import faiss

    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    scales = np.load(folder / "scales.npy", mmap_mode="r")
    nlist = int(min(16_384, max(64, 2 ** round(math.log2(math.sqrt(n))))))
    m = max(d for d in range(1, dim // 8 + 1) if dim % d == 0)  # ~one byte per 8 dimensions
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, max(48 * nlist, 16_384)), replace=False))  # PQ wants 39 × 256
    index.train(vectors[sample].astype(np.float32) * scales[sample, None])
    for start in tqdm(range(0, n, _BATCH), desc="vector index: IVF-PQ", unit="batch", file=sys.stderr, leave=False):
        end = min(n, start + _BATCH)
        index.add(vectors[start:end].astype(np.float32) * scales[start:end, None])
    faiss.write_index(index, str(folder / "ivfpq.faiss"))
    return {"nlist": nlist, "m": m}


def open_vector_index(db_path: Path, db_con: duckdb.DuckDBPyConnection) -> tuple[VectorIndex | None, str | None]:
    """The vector index of a feature file, memory-mapped, when it is there and current; else `(None, why not)`."""
    path = vectors_path(db_path)
    rebuild = f"search by meaning loads every vector into memory until `sae-explorer index {path.parent}` rebuilds it"
    if not (path / "meta.json").is_file():
        return None, f"no vector index ({path.name}); {rebuild}"
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("index_version") != INDEX_VERSION:
            return None, f"the vector index {path.name} is of another version; {rebuild}"
        if meta.get("content_id") != file_identity(db_path, db_con):
            return None, f"the vector index {path.name} is older than the feature file; {rebuild}"
        # copy-on-write maps: writable views for torch, never written back
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="c", allow_pickle=False) for name in ARRAYS}
        if any(len(a) != meta["rows"] for a in arrays.values()):
            return None, f"the vector index {path.name} is incomplete; {rebuild}"
        ann = None
        if "ann" in meta:
            if not faiss_available():
                return None, f"the vector index {path.name} needs faiss (`pip install faiss-cpu`); {rebuild}"
            import faiss

            # its inverted lists memory-mapped where faiss can: opening is instant and costs page cache, not memory
            ann = faiss.read_index(str(path / "ivfpq.faiss"), getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        return None, f"cannot read the vector index {path} ({e}); {rebuild}"
    return VectorIndex(**arrays, ann=ann), None


def vector_index_info(path: Path) -> dict[str, int]:
    """Rows, IVF-PQ settings and size on disk of a vector index (for `sae-explorer index` to report)."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    return {"rows": meta["rows"], **meta.get("ann", {}), "bytes": sum(p.stat().st_size for p in path.iterdir())}

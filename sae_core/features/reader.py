"""Everything the app asks of a features.duckdb file, as parameterised queries (a search string is data, never SQL).

Importable without Streamlit. A `FeatureStore` holds one read-only connection; each call uses its
own cursor, so one store can serve several threads. A store split into one file per SAE (`parts`) answers
every call like one file: a question about one SAE runs in that SAE's file.
"""

from __future__ import annotations

import itertools
import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import UserError
from .ann_index import open_vector_index
from .parts import open_store, store_path
from .search_index import SearchIndex, open_search_index
from .vector_index import SOURCES, VectorIndex

SCORES = ("detection", "fuzzing", "embedding")
"""An explanation's scores (see `sae_core.interp.scores`)."""
SORTABLE = ("density", "max_act", "mean_act", "fires", "feature", "sae_id", *SCORES)
"""Columns `list_features` may sort by (a whitelist: column names cannot be query parameters)."""
CURRENT_EXPLANATIONS = "(SELECT * FROM explanations WHERE current)"
"""The newest explanation of each explained feature: the one lists, searches and hovers show."""
SEARCH_COLUMNS = ["sae", "sae_id", "feature", "similarity", "matched", "label", "explanation", "detection", "density"]
"""The columns of a search by vector (and of "features like this one")."""
MEMORY_LIMIT = "512MB"
"""DuckDB's cache of decompressed blocks for a reader (its default is 80% of the machine's memory): the files are
read-only, so an evicted block is read again from the OS page cache, and a browsing app stays small."""
MAX_TOKEN_IDS = 16
"""A token search looks for at most this many vocabulary ids (e.g. "the", " the", "The", " THE" …)."""


class FeatureNotFound(UserError):
    """An SAE or feature id that the file does not hold."""


@dataclass(frozen=True)
class FeaturePage:
    """All one feature page shows."""

    sae: dict[str, Any]
    """The SAE's row of `saes` (hook name, layer, site, metrics …)."""
    feature: dict[str, Any]
    """The feature's row of `features` (density, max / mean activation, label …)."""
    histogram: pd.DataFrame
    """Columns `low`, `high`, `count`: the activation histogram's bins."""
    top_logits: pd.DataFrame
    """Columns `token_id`, `token`, `value`, strongest first."""
    bottom_logits: pd.DataFrame
    examples: pd.DataFrame
    """One row per example: `kind` (0 top, j ≥ 1 interval j), `rank`, `activation`, `position`, `tokens` (strings),
    `token_ids`, `acts` (the feature on each token), `max_index` (index of the example's token in `tokens`)."""
    neighbours: dict[str, pd.DataFrame]
    """By kind (`decoder_cosine`, `coactivation`): `feature`, `score`, `count`, `label`, `density`."""
    explanations: pd.DataFrame
    """Every explanation of the feature, newest first: `explanation`, `explainer`, `scorer`, `created`, the scores
    and their baselines (`detection`, `detection_shuffled`, `detection_handle`, …), `details` (parsed JSON)."""
    release: ReleaseStats
    """A published release's own statistics of the feature (`import-stats`), beside ours; empty when none."""


@dataclass(frozen=True)
class ReleaseStats:
    """What releases say of one feature (`sae_core.features.release_stats`): their numbers and top prompts, by origin."""

    features: pd.DataFrame
    """One row per origin: `origin`, `fires`, `density`, `max_act`, `mean_act` (null where the release gives none),
    `extra` (its other columns, parsed), `summary` (its summary file, parsed, or None)."""
    examples: pd.DataFrame
    """Its top prompts: `origin`, `rank`, `activation`, `text`, `token`, `extra` (parsed)."""

    @property
    def empty(self) -> bool:
        return self.features.empty and self.examples.empty


class FeatureStore:
    """Read-only access to a run's features (the run folder, its features.duckdb, or its folder of parts)."""

    _opened = itertools.count()

    def __init__(self, path: str | Path):
        self.path = store_path(path)
        self.serial = next(FeatureStore._opened)
        """Unique to this opening in this process: what caches of its answers key on (a reopened file gets another)."""
        self._con, self._parts = open_store(self.path)
        self._con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")

    def close(self) -> None:
        if "_pool" in self.__dict__:
            self._pool.shutdown(wait=True)
        self._con.close()

    @cached_property
    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=3, thread_name_prefix="feature-store")

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _cursor(self, sae_id: int | None) -> duckdb.DuckDBPyConnection:
        """A cursor whose tables are one SAE's part (in a split store, when `sae_id` is given), else the whole store's."""
        cursor = self._con.cursor()
        if sae_id is not None and self._parts:
            cursor.execute(f"SET search_path = '{self._parts[int(sae_id)]}.main'")  # an id from the store itself
        return cursor

    def _df(self, sql: str, params: list[Any] | None = None, *, sae: int | None = None) -> pd.DataFrame:
        return self._cursor(sae).execute(sql, params or []).df()

    def _rows(self, sql: str, params: list[Any] | None = None, *, sae: int | None = None) -> list[tuple]:
        return self._cursor(sae).execute(sql, params or []).fetchall()

    def _one(self, sql: str, params: list[Any] | None = None, *, sae: int | None = None) -> dict[str, Any] | None:
        cursor = self._cursor(sae).execute(sql, params or [])
        row = cursor.fetchone()
        return None if row is None else dict(zip((d[0] for d in cursor.description), row))

    # -- the file and its SAEs -------------------------------------------------------------------

    @cached_property
    def meta(self) -> dict[str, Any]:
        """Schema version, model, corpus, tokens processed, options, creation time."""
        return {k: json.loads(v) for k, v in self._rows("SELECT key, value FROM meta")}

    @cached_property
    def _saes(self) -> pd.DataFrame:
        return self._df("SELECT * FROM saes ORDER BY sae_id").set_index("sae_id", drop=False)

    def saes(self) -> pd.DataFrame:
        """One row per SAE, in layer / site order, with its metrics."""
        return self._saes.drop(columns="metrics").reset_index(drop=True)

    @cached_property
    def _sae_names(self) -> dict[str, int]:
        names: dict[str, int] = {}
        for row in self._saes.itertuples():
            names.update({str(row.sae_id): row.sae_id, row.hook_name: row.sae_id, row.short_name.lower(): row.sae_id})
        return names

    def sae_id(self, name: str | int) -> int:
        """The id of an SAE given its id, hook name (`blocks.6.hook_resid_post`) or short name (`L6R`)."""
        key = str(name).strip()
        found = self._sae_names.get(key, self._sae_names.get(key.lower()))
        if found is None:
            raise FeatureNotFound(f"no SAE {name!r} in {self.path}; it has {', '.join(self._saes.short_name)}")
        return int(found)

    def sae(self, name: str | int) -> dict[str, Any]:
        """The `saes` row of one SAE (with `metrics` parsed from JSON)."""
        row = self._saes.loc[self.sae_id(name)].to_dict()
        row["metrics"] = json.loads(row["metrics"]) if isinstance(row.get("metrics"), str) else {}
        return row

    def layer_summary(self) -> pd.DataFrame:
        """Per SAE: layer, site, evaluation metrics and precompute statistics (the layer comparison page)."""
        return self._df(
            """SELECT s.*, a.architecture, a.k, a.fvu, a.explained_variance, a.l0 AS l0_eval,
                      a.dead_fraction AS dead_fraction_eval, a.dense_fraction, a.ce_loss_recovered, a.kl_div, a.delta_lm_loss
               FROM site_summary s JOIN saes a USING (sae_id) ORDER BY s.layer, s.sae_id"""
        )

    # -- vocabulary --------------------------------------------------------------------------------

    @cached_property
    def vocab(self) -> list[str]:
        """Display string of every token id."""
        return [t for (t,) in self._rows("SELECT token FROM vocab ORDER BY token_id")]

    def token_ids(self, text: str) -> list[int]:
        """Ids of the tokens that display as `text` (ignoring case and surrounding whitespace); an int string is an id."""
        text = text.strip()
        if text.isdigit() and int(text) < len(self.vocab):
            return [int(text)]
        return [i for (i,) in self._rows("SELECT token_id FROM vocab WHERE lower(trim(token)) = lower(?)", [text])]

    @cached_property
    def context_ids(self) -> np.ndarray:
        """Ids of the contexts the store holds: every context the statistics were computed on (one file), or the
        ones its examples show (a split store keeps only those)."""
        return np.array([c for (c,) in self._rows("SELECT context_id FROM contexts ORDER BY context_id")], dtype=np.int64)

    def context_tokens(self, context_ids: list[int]) -> dict[int, list[int]]:
        """Token ids of some contexts, by id."""
        rows = self._rows("SELECT context_id, token_ids FROM contexts WHERE context_id IN (SELECT unnest(?))",
                          [[int(c) for c in context_ids]])
        return {int(c): [int(t) for t in ids] for c, ids in rows}

    # -- one feature -------------------------------------------------------------------------------

    def feature(self, sae: str | int, feature: int) -> FeaturePage:
        """Everything a feature page shows, in four indexed lookups."""
        sae_id = self.sae_id(sae)
        sae_row = self.sae(sae_id)
        # the lookups are independent and DuckDB runs each without the GIL: side by side they take the longest one's time
        examples = self._pool.submit(self.examples, sae_id, feature)
        neighbours = self._pool.submit(self.neighbours, sae_id, feature)
        explanations = self._pool.submit(self.explanations, sae_id, feature)
        release = self._pool.submit(self.release, sae_id, feature)
        row = self._one("SELECT * FROM features WHERE sae_id = ? AND feature = ?", [sae_id, int(feature)], sae=sae_id)
        if row is None:
            raise FeatureNotFound(
                f"{sae_row['short_name']} has no feature {feature}; its features are 0 … {sae_row['d_sae'] - 1}"
            )
        return FeaturePage(
            sae=sae_row,
            feature=row,
            histogram=_histogram(row["hist_counts"], row["hist_max"]),
            top_logits=self._logits(row["top_logit_ids"], row["top_logit_values"]),
            bottom_logits=self._logits(row["bottom_logit_ids"], row["bottom_logit_values"]),
            examples=examples.result(),
            neighbours=neighbours.result(),
            explanations=explanations.result(),
            release=release.result(),
        )

    def examples(self, sae_id: int, feature: int) -> pd.DataFrame:
        """Top and interval examples of one feature with their windows' tokens (see `FeaturePage.examples`)."""
        df = self._df(
            """SELECT e.kind, e.rank, e.activation, e.context_id, e.position, e.window_start, e.acts,
                      list_slice(c.token_ids, e.window_start + 1, e.window_start + len(e.acts)) AS token_ids
               FROM examples e JOIN contexts c ON c.context_id = e.context_id
               WHERE e.sae_id = ? AND e.feature = ? ORDER BY e.kind, e.rank""",
            [int(sae_id), int(feature)], sae=sae_id,
        )
        vocab = self.vocab
        df["tokens"] = [[vocab[t] for t in ids] for ids in df["token_ids"]]
        df["max_index"] = df["position"] - df["window_start"]
        return df

    def neighbours(self, sae_id: int, feature: int) -> dict[str, pd.DataFrame]:
        """Decoder-cosine and co-activation neighbours, with their labels and densities."""
        lists = self._rows(
            "SELECT kind, ids, scores, counts FROM neighbours WHERE sae_id = ? AND feature = ? ORDER BY kind",
            [int(sae_id), int(feature)], sae=sae_id,
        )
        wanted = sorted({int(i) for _, ids, _, _ in lists for i in ids})
        index = self._search_index[0]
        if index is not None:  # point lookups in the index: ~1 ms against ~6 ms for the join at 5.5M features
            found = index.summaries([int(sae_id)] * len(wanted), wanted)
            rows = zip(found.feature, found.label, found.density)
        else:
            rows = self._rows("SELECT feature, label, density FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
                              [int(sae_id), wanted], sae=sae_id)
        info = {int(f): (label, density) for f, label, density in rows}
        out = {}
        for kind, ids, scores, counts in lists:
            out[kind] = pd.DataFrame({
                "rank": range(1, len(ids) + 1),
                "feature": ids,
                "score": scores,
                "count": counts if counts is not None else [None] * len(ids),
                "label": [info.get(i, (None, None))[0] for i in ids],
                "density": [info.get(i, (None, None))[1] for i in ids],
            })
        return out

    def explanations(self, sae_id: int, feature: int) -> pd.DataFrame:
        """Every explanation of one feature with its scores, newest first (empty when it has none)."""
        df = self._df("""SELECT * EXCLUDE (explanation_lower, current) FROM explanations WHERE sae_id = ? AND feature = ?
                         ORDER BY current DESC, created DESC""",
                      [int(sae_id), int(feature)], sae=sae_id)
        df["details"] = [json.loads(d) if isinstance(d, str) else {} for d in df["details"]]
        return df

    def release(self, sae_id: int, feature: int) -> ReleaseStats:
        """A release's own statistics and top prompts of one feature, by origin (empty when none were imported)."""
        args = [int(sae_id), int(feature)]
        features = self._df("""SELECT f.origin, f.fires, f.density, f.max_act, f.mean_act, f.extra, s.summary
                               FROM release_features f LEFT JOIN release_sources s USING (sae_id, origin)
                               WHERE f.sae_id = ? AND f.feature = ? ORDER BY f.origin""", args, sae=sae_id)
        examples = self._df("""SELECT origin, rank, activation, text, token, extra FROM release_examples
                               WHERE sae_id = ? AND feature = ? ORDER BY origin, rank""", args, sae=sae_id)
        for frame, column in ((features, "extra"), (features, "summary"), (examples, "extra")):
            frame[column] = [json.loads(v) if isinstance(v, str) else None for v in frame[column]]
        return ReleaseStats(features, examples)

    def release_sources(self) -> pd.DataFrame:
        """Every release whose statistics the store holds: `sae`, `origin`, `imported`, `column_map` (file → role →
        its column) and `summary`, both parsed."""
        frame = self._df("SELECT sae_id, origin, imported, column_map, summary FROM release_sources ORDER BY sae_id, origin")
        for column in ("column_map", "summary"):
            frame[column] = [json.loads(v) if isinstance(v, str) else None for v in frame[column]]
        return self._with_sae_names(frame, ["sae", "origin", "imported", "column_map", "summary"])

    def explained_by(self, explainer: str, scorer: str) -> set[tuple[str, int]]:
        """`(SAE short name, feature)` of every feature with an explanation by this explainer scored by this scorer."""
        rows = self._rows("""SELECT s.short_name, e.feature FROM explanations e JOIN saes s USING (sae_id)
                             WHERE e.explainer = ? AND e.scorer = ?""", [explainer, scorer])
        return {(str(short), int(f)) for short, f in rows}

    def describe(self, sae: str | int, features: list[int]) -> dict[int, str]:
        """What to show for features where space is short (hovers, tables): the newest explanation with its
        detection score, else the token handle."""
        rows = self._rows(
            f"""SELECT f.feature, f.label, e.explanation, e.detection FROM features f
                LEFT JOIN {CURRENT_EXPLANATIONS} e USING (sae_id, feature)
                WHERE f.sae_id = ? AND f.feature IN (SELECT unnest(?))""",
            [self.sae_id(sae), [int(f) for f in features]], sae=self.sae_id(sae),
        )
        return {int(f): describe_feature(label, explanation, detection) for f, label, explanation, detection in rows}

    def labels(self, sae: str | int, features: list[int]) -> dict[int, str]:
        """Labels of some features of one SAE (missing ids are left out)."""
        rows = self._rows(
            "SELECT feature, label FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
            [self.sae_id(sae), [int(f) for f in features]], sae=self.sae_id(sae),
        )
        return {int(f): label for f, label in rows}

    def _logits(self, ids: Any, values: Any) -> pd.DataFrame:
        ids = [int(i) for i in ids]
        return pd.DataFrame({"token_id": ids, "token": [self.vocab[i] for i in ids], "value": list(values)})

    # -- many features -----------------------------------------------------------------------------

    def list_features(
        self,
        *,
        saes: list[int] | None = None,
        layers: list[int] | None = None,
        sites: list[str] | None = None,
        min_density: float | None = None,
        max_density: float | None = None,
        min_max_act: float | None = None,
        include_dead: bool = True,
        explained_only: bool = False,
        min_score: tuple[str, float] | None = None,
        sort_by: str = "density",
        descending: bool = True,
        limit: int = 100,
        offset: int = 0,
    ) -> pd.DataFrame:
        """Features filtered by SAE / layer / site, density, max activation and an explanation score
        (`min_score=("detection", 0.7)`), sorted by a column of `SORTABLE` (unexplained features last)."""
        if sort_by not in SORTABLE:
            raise UserError(f"cannot sort by {sort_by!r}; choose one of {', '.join(SORTABLE)}")
        if min_score is not None and min_score[0] not in SCORES:
            raise UserError(f"cannot filter by {min_score[0]!r}; choose one of {', '.join(SCORES)}")
        where, params = self._filters(saes, layers, sites)
        for clause, value in (("f.density >= ?", min_density), ("f.density <= ?", max_density), ("f.max_act >= ?", min_max_act)):
            if value is not None:
                where.append(clause)
                params.append(float(value))
        if not include_dead:
            where.append("NOT f.dead")
        if explained_only:
            where.append("e.explanation IS NOT NULL")
        if min_score is not None:
            where.append(f"e.{min_score[0]} >= ?")
            params.append(float(min_score[1]))
        table = "e" if sort_by in SCORES else "f"
        order = f"{table}.{sort_by} {'DESC' if descending else 'ASC'} NULLS LAST, f.sae_id, f.feature"
        return self._df(
            f"""SELECT s.short_name AS sae, f.sae_id, f.feature, f.label, e.explanation, e.detection, e.fuzzing, e.embedding,
                       f.density, f.max_act, f.mean_act, f.fires, f.dead
                FROM features f JOIN saes s USING (sae_id) LEFT JOIN {CURRENT_EXPLANATIONS} e USING (sae_id, feature)
                WHERE {" AND ".join(where) or "TRUE"} ORDER BY {order} LIMIT ? OFFSET ?""",
            [*params, int(limit), int(offset)], sae=int(saes[0]) if saes and len(set(saes)) == 1 else None,
        )

    @cached_property
    def _search_index(self) -> tuple[SearchIndex | None, str | None]:
        return open_search_index(self.path, self._con)

    @property
    def search_index_problem(self) -> str | None:
        """Why label, explanation and token searches scan the whole file (no index, or a stale one), or None."""
        return self._search_index[1]

    def _with_sae_names(self, frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        frame.insert(0, "sae", pd.Series([self._saes.short_name.get(i) for i in frame.sae_id], dtype=object))
        dtypes = {"sae_id": "int32", "feature": "int32", "density": "float64", "max_act": "float32", "detection": "float64"}
        return frame.astype({c: t for c, t in dtypes.items() if c in frame})[columns]

    def search_label(self, text: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose label contains `text`, case-insensitively and literally (no wildcards), strongest first."""
        columns = ["sae", "sae_id", "feature", "label", "density", "max_act"]
        index = self._search_index[0]
        if index is not None:
            return self._with_sae_names(index.labels(text, saes=saes, limit=limit), columns)
        where, params = self._filters(saes, None, None)
        where.append("contains(f.label_lower, ?)")
        params.append(text.lower())
        return self._df(
            f"""SELECT s.short_name AS sae, f.sae_id, f.feature, f.label, f.density, f.max_act
                FROM features f JOIN saes s USING (sae_id)
                WHERE {" AND ".join(where)} ORDER BY f.max_act DESC, f.sae_id, f.feature LIMIT ?""",
            [*params, int(limit)],
        )

    def search_explanation(self, text: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose newest explanation contains `text`, case-insensitively and literally, best detection first."""
        columns = ["sae", "sae_id", "feature", "label", "explanation", "detection", "density", "max_act"]
        index = self._search_index[0]
        if index is not None:
            return self._with_sae_names(index.explanations(text, saes=saes, limit=limit), columns)
        where, params = self._filters(saes, None, None)
        where.append("contains(e.explanation_lower, ?)")
        params.append(text.lower())
        return self._df(
            f"""SELECT s.short_name AS sae, f.sae_id, f.feature, f.label, e.explanation, e.detection, f.density, f.max_act
                FROM {CURRENT_EXPLANATIONS} e JOIN features f USING (sae_id, feature) JOIN saes s USING (sae_id)
                WHERE {" AND ".join(where)} ORDER BY e.detection DESC NULLS LAST, f.sae_id, f.feature LIMIT ?""",
            [*params, int(limit)],
        )

    def search_text(self, text: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose explanation or label contains `text`: explanation matches first, then label matches."""
        found = pd.concat([self.search_explanation(text, saes=saes, limit=limit), self.search_label(text, saes=saes, limit=limit)])
        return found.drop_duplicates(["sae_id", "feature"]).head(limit).reset_index(drop=True)

    # -- search by meaning -------------------------------------------------------------------------

    @cached_property
    def embedder_settings(self) -> dict[str, Any] | None:
        """Name, dimension and settings of the model that embedded this file's features (None: not embedded)."""
        return self.meta.get("embedder")

    @cached_property
    def _vector_index(self) -> tuple[VectorIndex, str | None]:
        index, problem = open_vector_index(self.path, self._con)
        return (index, None) if index is not None else (self._vector_index_from_file(), problem)

    def _vector_index_from_file(self) -> VectorIndex:
        table = self._con.cursor().sql(
            "SELECT sae_id, feature, source, scale, vector FROM feature_vectors ORDER BY sae_id, feature, source"
        ).to_arrow_table()
        dim = int((self.embedder_settings or {}).get("dim") or 0)
        sources = np.array([SOURCES.index(s) for s in table.column("source").to_pylist()], dtype=np.int8)
        return VectorIndex.from_arrays(
            table.column("sae_id").to_numpy(), table.column("feature").to_numpy(), sources,
            table.column("scale").to_numpy().astype(np.float32), int8_rows(table.column("vector"), dim),
        )

    @property
    def vector_index(self) -> VectorIndex:
        """Every feature vector of the file: memory-mapped from the vector index beside it (`ann_index`), or, when
        that is missing or stale, loaded into memory (400 MB per million 384-d vectors) and searched exactly."""
        return self._vector_index[0]

    @property
    def vector_index_problem(self) -> str | None:
        """Why search by meaning loads every vector into memory (no vector index, or a stale one), or None."""
        return self._vector_index[1]

    def search_by_vector(self, vector: np.ndarray, *, saes: list[int] | None = None, limit: int = 50,
                         exclude: tuple[int, int] | None = None) -> pd.DataFrame:
        """Features whose vectors are nearest `vector` (cosine), across all SAEs or `saes`: with their label,
        newest explanation and detection score, `similarity` and which vector `matched`."""
        hits = self.vector_index.search(vector, limit=limit, sae_ids=saes, exclude=exclude)
        if hits.empty:
            return pd.DataFrame(columns=SEARCH_COLUMNS)
        keys = [hits.sae_id.astype(int).tolist(), hits.feature.astype(int).tolist()]
        index = self._search_index[0]
        if index is not None:  # point lookups: ~1 ms for 100 hits, against ~40 ms for the join below at 1M features
            info = index.summaries(*keys)
        else:
            info = self._df(
                f"""SELECT f.sae_id, f.feature, f.label, e.explanation, e.detection, f.density
                    FROM (SELECT unnest(?) AS sae_id, unnest(?) AS feature) k JOIN features f USING (sae_id, feature)
                    LEFT JOIN {CURRENT_EXPLANATIONS} e USING (sae_id, feature)""",
                keys,
            )
        found = hits.merge(info.astype({"sae_id": "int64", "feature": "int64"}), on=["sae_id", "feature"], how="inner")
        return self._with_sae_names(found, SEARCH_COLUMNS)

    def similar_features(self, sae: str | int, feature: int, *, limit: int = 10, across_saes: bool = True) -> pd.DataFrame:
        """Features like this one by the same vectors (its explanation's if it has one, else its examples'),
        itself left out; empty when the file or the feature has no vectors."""
        sae_id = self.sae_id(sae)
        own = self.vector_index.vectors_of(sae_id, int(feature))
        vector = own.get("explanation", own.get("examples"))
        if vector is None:
            return pd.DataFrame(columns=SEARCH_COLUMNS)
        return self.search_by_vector(vector, saes=None if across_saes else [sae_id], limit=limit, exclude=(sae_id, int(feature)))

    def search_token(self, token: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose top examples peak on `token` or whose logit effects promote it, strongest first.

        `token` matches every vocabulary entry that displays as it (ignoring case and surrounding
        whitespace), or is a token id; the `where` column says which list matched.
        """
        ids = self.token_ids(token)[:MAX_TOKEN_IDS]
        columns = ["sae", "sae_id", "feature", "label", "density", "max_act", "where"]
        if not ids:
            return pd.DataFrame(columns=columns)
        index = self._search_index[0]
        if index is not None:
            found = index.tokens(ids, saes=saes, limit=limit)
            found["where"] = [_where(f, p) for f, p in zip(found.pop("fires"), found.pop("promotes"))]
            return self._with_sae_names(found, columns)
        where, params = self._filters(saes, None, None)
        # one list_contains per id: far faster than list_has_any over a million rows
        where.append("(" + " OR ".join(["list_contains(f.top_token_ids, ?) OR list_contains(f.top_logit_ids, ?)"] * len(ids)) + ")")
        params += [i for i in ids for _ in range(2)]
        df = self._df(
            f"""SELECT s.short_name AS sae, f.sae_id, f.feature, f.label, f.density, f.max_act, f.top_token_ids, f.top_logit_ids
                FROM features f JOIN saes s USING (sae_id)
                WHERE {" AND ".join(where)} ORDER BY f.max_act DESC, f.sae_id, f.feature LIMIT ?""",
            [*params, int(limit)],
        )
        wanted = set(ids)
        fires = [bool(wanted & set(t)) for t in df.top_token_ids]
        promotes = [bool(wanted & set(t)) for t in df.top_logit_ids]
        df["where"] = [_where(f, p) for f, p in zip(fires, promotes)]
        return df[columns]

    def live_features(self, sae: str | int, min_fires: int = 1) -> list[int]:
        """The features of one SAE that fired at least `min_fires` times, from the rarest to the most common."""
        return [int(f) for (f,) in self._rows(
            "SELECT feature FROM features WHERE sae_id = ? AND fires >= ? ORDER BY density, feature",
            [self.sae_id(sae), max(1, int(min_fires))], sae=self.sae_id(sae),
        )]

    def is_dead(self, sae: str | int, feature: int) -> bool:
        """Whether a feature never fired on the precompute tokens."""
        sae_id = self.sae_id(sae)
        row = self._rows("SELECT dead FROM features WHERE sae_id = ? AND feature = ?", [sae_id, int(feature)], sae=sae_id)
        return bool(row[0][0]) if row else True

    def random_feature(self, sae: str | int | None = None, rng: random.Random | None = None) -> tuple[int, int]:
        """A random live feature `(sae_id, feature)`, of one SAE or any."""
        rng = rng or random.Random()
        where, params = ("WHERE sae_id = ?", [self.sae_id(sae)]) if sae is not None else ("", [])
        counts = self._rows(f"SELECT sae_id, d_sae FROM saes {where} ORDER BY sae_id", params)
        for _ in range(64):  # rejection sampling: cheap lookups instead of a scan over all features
            sae_id, d_sae = rng.choices(counts, weights=[c[1] for c in counts])[0]
            feature = rng.randrange(d_sae)
            if not self.is_dead(sae_id, feature):
                return int(sae_id), feature
        raise FeatureNotFound("found no live feature in 64 random draws; the SAEs may be (nearly) all dead")

    def _filters(self, saes: list[int] | None, layers: list[int] | None, sites: list[str] | None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, values in (("f.sae_id", saes), ("s.layer", layers), ("s.site", sites)):
            if values:
                where.append(f"{column} IN (SELECT unnest(?))")
                params.append(list(values))
        return where, params


def describe_feature(label: str, explanation: str | None, detection: float | None) -> str:
    """An explanation with its detection score, or the token handle when there is none."""
    if not explanation:
        return label
    score = f" (detection {detection:.2f})" if detection is not None and detection == detection else ""
    return f"{explanation}{score}"


def int8_rows(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A list column of `dim` int8 values per row as one `(rows, dim)` int8 matrix, chunk by chunk (one combined
    chunk would overflow Arrow's 32-bit list offsets beyond 2^31 values: 5.6M 384-d vectors)."""
    rows = np.empty((len(column), dim if len(column) else 0), dtype=np.int8)
    start = 0
    for chunk in column.chunks:
        rows[start : start + len(chunk)] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), dim)
        start += len(chunk)
    return rows


def _where(fires: bool, promotes: bool) -> str:
    """The `where` column of a token search: which of a feature's lists matched."""
    return ", ".join(w for w, on in (("fires on", fires), ("promotes", promotes)) if on)


def _histogram(counts: Any, top: float) -> pd.DataFrame:
    counts = [int(c) for c in counts]
    width = float(top) / len(counts) if counts else 0.0
    return pd.DataFrame({"low": [i * width for i in range(len(counts))], "high": [(i + 1) * width for i in range(len(counts))], "count": counts})

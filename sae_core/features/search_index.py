"""The text index beside a feature file (`features.search.sqlite`): label, explanation and token searches
become index lookups instead of scans over every feature.

Built with SQLite, which ships with Python: FTS5's trigram tokenizer for substrings of three characters or
more, a table of the rare one- and two-character substrings for shorter ones, and token postings. Rows are
numbered in the order a search returns them (strongest first), so the first `limit` matches in row order
*are* the answer: no search sorts, and a common substring stops after a few hundred rows. Every candidate is
checked against the exact rule of the scan it replaces (a literal, case-insensitive substring), so results
are the scan's, row for row; `tests/test_search_index.py` holds the two side by side.

The index records the `content_id` of the feature file it was built from; a reader that finds it missing or
stale says so and scans (`FeatureStore.search_index_problem`), and every writer of feature files rebuilds it
(`indexes.refresh_indexes`).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from tqdm.auto import tqdm

from ..io import atomic_path
from .parts import open_store
from .schema import file_identity

INDEX_VERSION = 2
SHORT_GRAM_POSTINGS_MAX = 20_000
"""A one- or two-character substring found in at most this many rows gets postings; a commoner one is found by
walking the rows in order (on average `limit × rows / count` of them: 14k rows for 50 hits among 5.5M)."""
LABEL_ORDER = "f.max_act DESC, f.sae_id, f.feature"
EXPLANATION_ORDER = "e.detection DESC NULLS LAST, f.sae_id, f.feature"
_BATCH = 50_000

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
-- every feature, numbered by (max_act DESC, sae_id, feature): the order of label and token searches
CREATE TABLE features (rank INTEGER PRIMARY KEY, sae_id INTEGER, feature INTEGER, label TEXT, label_lower TEXT,
                       density REAL, max_act REAL);
-- every current explanation, numbered by (detection DESC NULLS LAST, sae_id, feature)
CREATE TABLE explanations (rank INTEGER PRIMARY KEY, feature_rank INTEGER, sae_id INTEGER, explanation TEXT,
                           explanation_lower TEXT, detection REAL);
-- token id -> the features whose top examples peak on it (how & 1) or which promote it (how & 2)
CREATE TABLE tokens (token_id INTEGER, rank INTEGER, sae_id INTEGER, how INTEGER,
                     PRIMARY KEY (token_id, rank)) WITHOUT ROWID;
-- the substrings of one or two characters: how many rows hold each, and the rows of the rare ones
CREATE TABLE short_counts (kind TEXT, gram TEXT, n INTEGER, PRIMARY KEY (kind, gram)) WITHOUT ROWID;
CREATE TABLE short_postings (kind TEXT, gram TEXT, rank INTEGER, PRIMARY KEY (kind, gram, rank)) WITHOUT ROWID;
"""
KEY_INDEXES = """
-- (sae_id, feature) -> its row and its explanation's: what search by meaning shows beside each hit
CREATE UNIQUE INDEX features_by_key ON features (sae_id, feature);
CREATE INDEX explanations_by_feature ON explanations (feature_rank);
"""
TEXTS = {"label": ("features", "label_lower"), "explanation": ("explanations", "explanation_lower")}
"""Searchable texts: kind -> (table, lower-cased column)."""


def index_path(db_path: str | Path) -> Path:
    """Where the index of a feature file lives: `features.duckdb` → `features.search.sqlite`."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".search.sqlite")


def fts5_available() -> bool:
    """Whether this Python's SQLite has FTS5 with the trigram tokenizer (SQLite ≥ 3.34)."""
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram')")
    except sqlite3.OperationalError:
        return False
    return True


# -- building ---------------------------------------------------------------------------------------


def build_search_index(db_path: str | Path) -> Path:
    """Build (or rebuild) the index of a feature file; written to a temporary file and renamed into place."""
    db_path = Path(db_path)
    out = index_path(db_path)
    with open_store(db_path)[0] as con, atomic_path(out) as tmp:
        tmp.unlink()
        sql = sqlite3.connect(tmp)
        steps = [partial(write, con, sql) for write in (_write_features, _write_explanations, _write_tokens)]
        steps += [partial(write, sql, kind, *texts) for kind, texts in TEXTS.items() for write in (_write_short_grams, _write_fts)]
        steps.append(partial(sql.executescript, KEY_INDEXES))  # after the rows: one sort instead of random inserts
        try:
            sql.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + SCHEMA)
            for step in tqdm(steps, desc="search index", unit="step", file=sys.stderr, dynamic_ncols=True, leave=False):
                step()
            meta = {"index_version": INDEX_VERSION, "content_id": file_identity(db_path, con),
                    "short_postings_max": SHORT_GRAM_POSTINGS_MAX}
            sql.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            sql.commit()
            sql.execute("VACUUM")
        finally:
            sql.close()
    return out


def _batches(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[list[tuple]]:
    cursor = con.cursor().execute(query)
    while rows := cursor.fetchmany(_BATCH):
        yield rows


def _write_features(con: duckdb.DuckDBPyConnection, sql: sqlite3.Connection) -> None:
    query = f"""SELECT row_number() OVER (ORDER BY {LABEL_ORDER}) - 1, f.sae_id, f.feature, f.label, f.label_lower,
                       f.density, f.max_act FROM features f ORDER BY {LABEL_ORDER}"""
    for rows in _batches(con, query):
        sql.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def _ranked_features() -> str:
    return f"(SELECT row_number() OVER (ORDER BY {LABEL_ORDER}) - 1 AS rank, f.* FROM features f)"


def _write_explanations(con: duckdb.DuckDBPyConnection, sql: sqlite3.Connection) -> None:
    query = f"""SELECT row_number() OVER (ORDER BY {EXPLANATION_ORDER}) - 1, f.rank, f.sae_id, e.explanation,
                       e.explanation_lower, e.detection
                FROM (SELECT * FROM explanations WHERE current) e JOIN {_ranked_features()} f USING (sae_id, feature)
                ORDER BY {EXPLANATION_ORDER}"""
    for rows in _batches(con, query):
        sql.executemany("INSERT INTO explanations VALUES (?, ?, ?, ?, ?, ?)", rows)


def _write_tokens(con: duckdb.DuckDBPyConnection, sql: sqlite3.Connection) -> None:
    query = f"""SELECT token_id, rank, any_value(sae_id), bit_or(how) FROM (
                    SELECT unnest(top_token_ids) AS token_id, rank, sae_id, 1 AS how FROM {_ranked_features()}
                    UNION ALL
                    SELECT unnest(top_logit_ids), rank, sae_id, 2 FROM {_ranked_features()})
                GROUP BY token_id, rank ORDER BY token_id, rank"""
    for rows in _batches(con, query):
        sql.executemany("INSERT INTO tokens VALUES (?, ?, ?, ?)", rows)


def short_grams(text: str) -> set[str]:
    """The distinct substrings of one and two characters of `text`."""
    return {*text, *(text[i : i + 2] for i in range(len(text) - 1))}


def _write_fts(sql: sqlite3.Connection, kind: str, table: str, column: str) -> None:
    sql.execute(f"CREATE VIRTUAL TABLE {kind}_fts USING fts5({column}, content='{table}', content_rowid='rank', "
                "tokenize='trigram case_sensitive 1', detail='none')")
    sql.execute(f"INSERT INTO {kind}_fts({kind}_fts) VALUES ('rebuild')")


def _write_short_grams(sql: sqlite3.Connection, kind: str, table: str, column: str) -> None:
    counts: Counter[str] = Counter()
    for (text,) in sql.execute(f"SELECT {column} FROM {table}"):
        counts.update(short_grams(text or ""))
    sql.executemany("INSERT INTO short_counts VALUES (?, ?, ?)", ((kind, g, n) for g, n in counts.items()))
    rare = {g for g, n in counts.items() if n <= SHORT_GRAM_POSTINGS_MAX}
    postings = ((kind, g, rank) for rank, text in sql.execute(f"SELECT rank, {column} FROM {table}")
                for g in short_grams(text or "") & rare)
    sql.executemany("INSERT INTO short_postings VALUES (?, ?, ?)", sorted(postings))


# -- reading ----------------------------------------------------------------------------------------


@dataclass
class SearchIndex:
    """An open, up-to-date index; open it with `open_search_index`. Safe to share between threads (the app's
    sessions): each search holds the connection's lock for its few milliseconds."""

    con: sqlite3.Connection
    short_postings_max: int
    """The `SHORT_GRAM_POSTINGS_MAX` the index was built with."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def labels(self, text: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose label contains `text` (literally, ignoring case), strongest first: `sae_id`, `feature`,
        `label`, `density`, `max_act`."""
        with self.lock:
            ranks = self._matches("label", text.lower(), saes, limit)
            return self._features(ranks, ["sae_id", "feature", "label", "density", "max_act"])

    def explanations(self, text: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose current explanation contains `text`, best detection first: `sae_id`, `feature`, `label`,
        `explanation`, `detection`, `density`, `max_act`."""
        with self.lock:
            ranks = self._matches("explanation", text.lower(), saes, limit)
            rows = self._rows_by_rank(
                """SELECT e.rank, f.sae_id, f.feature, f.label, e.explanation, e.detection, f.density, f.max_act
                   FROM explanations e JOIN features f ON f.rank = e.feature_rank WHERE e.rank IN ({})""", ranks)
        return pd.DataFrame(rows, columns=["sae_id", "feature", "label", "explanation", "detection", "density", "max_act"])

    def tokens(self, token_ids: list[int], *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose top examples peak on, or whose logits promote, one of `token_ids`, strongest first:
        `sae_id`, `feature`, `label`, `density`, `max_act`, `fires`, `promotes`."""
        how: dict[int, int] = {}
        sae_filter, params = _in_clause("sae_id", saes)
        with self.lock:
            for token_id in token_ids:  # each id's first `limit` rows hold all its features in the overall top `limit`
                for rank, bits in self.con.execute(f"SELECT rank, how FROM tokens WHERE token_id = ? {sae_filter} "
                                                   "ORDER BY rank LIMIT ?", [int(token_id), *params, int(limit)]):
                    how[rank] = how.get(rank, 0) | bits
            ranks = sorted(how)[:limit]
            frame = self._features(ranks, ["sae_id", "feature", "label", "density", "max_act"])
        frame["fires"] = [bool(how[r] & 1) for r in ranks]
        frame["promotes"] = [bool(how[r] & 2) for r in ranks]
        return frame

    def summaries(self, sae_ids: list[int], features: list[int]) -> pd.DataFrame:
        """What a search by meaning shows beside each hit, by point lookups: `sae_id`, `feature`, `label`,
        `explanation` (current), `detection`, `density`; features the file lacks are left out."""
        sql = """SELECT f.sae_id, f.feature, f.label, e.explanation, e.detection, f.density FROM features f
                 LEFT JOIN explanations e ON e.feature_rank = f.rank WHERE f.sae_id = ? AND f.feature = ?"""
        with self.lock:
            rows = [self.con.execute(sql, [int(s), int(f)]).fetchone() for s, f in zip(sae_ids, features)]
        return pd.DataFrame([r for r in rows if r is not None],
                            columns=["sae_id", "feature", "label", "explanation", "detection", "density"])

    def _matches(self, kind: str, text: str, saes: list[int] | None, limit: int) -> list[int]:
        """Ranks of the first `limit` rows of `kind` whose text contains `text`."""
        table, column = TEXTS[kind]
        sae_filter, params = _in_clause("t.sae_id", saes)
        exact = f"instr(t.{column}, ?) > 0 {sae_filter}"
        trigrams = {text[i : i + 3] for i in range(len(text) - 2)}
        trigrams = {t for t in trigrams if "\x00" not in t}  # FTS5 cannot be asked for NUL; the others narrow enough
        if trigrams:
            query = " ".join('"' + t.replace('"', '""') + '"' for t in sorted(trigrams))
            sql = (f"SELECT t.rank FROM {kind}_fts JOIN {table} t ON t.rank = {kind}_fts.rowid "
                   f"WHERE {kind}_fts MATCH ? AND {exact} ORDER BY {kind}_fts.rowid LIMIT ?")
            candidates = self.con.execute(sql, [query, text, *params, int(limit)])
        elif len(text) < 3:
            row = self.con.execute("SELECT n FROM short_counts WHERE kind = ? AND gram = ?", [kind, text]).fetchone()
            if text and row is None:
                return []
            if text and row[0] <= self.short_postings_max:
                sql = (f"SELECT t.rank FROM short_postings p JOIN {table} t ON t.rank = p.rank "
                       f"WHERE p.kind = ? AND p.gram = ? {sae_filter} ORDER BY p.rank LIMIT ?")
                candidates = self.con.execute(sql, [kind, text, *params, int(limit)])
            else:
                candidates = self._walk(table, exact, [text, *params, int(limit)])
        else:
            candidates = self._walk(table, exact, [text, *params, int(limit)])
        return [rank for (rank,) in candidates]

    def _walk(self, table: str, exact: str, params: list[Any]) -> Iterable[tuple[int]]:
        """Rows in order, each checked: fast for a common substring (or none), which stops after a few rows."""
        return self.con.execute(f"SELECT t.rank FROM {table} t WHERE {exact} ORDER BY t.rank LIMIT ?", params)

    def _features(self, ranks: list[int], columns: list[str]) -> pd.DataFrame:
        rows = self._rows_by_rank(f"SELECT rank, {', '.join(columns)} FROM features WHERE rank IN ({{}})", ranks)
        return pd.DataFrame(rows, columns=columns)

    def _rows_by_rank(self, sql: str, ranks: list[int]) -> list[tuple]:
        """The rows of `ranks` (first column: rank), in the order of `ranks`, without it."""
        if not ranks:
            return []
        found = {row[0]: row[1:] for row in self.con.execute(sql.format(",".join("?" * len(ranks))), ranks)}
        return [found[r] for r in ranks]


def _in_clause(column: str, values: Iterable[int] | None) -> tuple[str, list[int]]:
    values = [int(v) for v in values or []]
    return (f"AND {column} IN ({','.join('?' * len(values))})", values) if values else ("", [])


def open_search_index(db_path: Path, db_con: duckdb.DuckDBPyConnection) -> tuple[SearchIndex | None, str | None]:
    """The index of a feature file when it is there and current, else `(None, why not)`."""
    path = index_path(db_path)
    rebuild = f"searches scan the feature file until `sae-explorer index {path.parent}` rebuilds it"
    if not path.is_file():
        return None, f"no search index ({path.name}); {rebuild}"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
    except sqlite3.Error as e:
        return None, f"cannot read the search index {path} ({e}); {rebuild}"
    if meta.get("index_version") != INDEX_VERSION:
        con.close()
        return None, f"the search index {path.name} is of another version; {rebuild}"
    if meta.get("content_id") != file_identity(db_path, db_con):
        con.close()
        return None, f"the search index {path.name} is older than the feature file; {rebuild}"
    return SearchIndex(con, int(meta["short_postings_max"])), None


def search_index_info(path: Path) -> dict[str, Any]:
    """Rows per table of an index (for `sae-explorer index` to report)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("features", "explanations", "tokens", "short_postings")}

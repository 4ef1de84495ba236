"""Everything the app asks of a features.duckdb file, as parameterised queries (a search string is data, never SQL).

Importable without Streamlit. A `FeatureStore` holds one read-only connection; each call uses its
own cursor, so one store can serve several threads.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from .schema import DB_FILE, open_read_only

SORTABLE = ("density", "max_act", "mean_act", "fires", "feature", "sae_id")
"""Columns `list_features` may sort by (a whitelist: column names cannot be query parameters)."""
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


class FeatureStore:
    """Read-only access to one features.duckdb file (a run folder or the file itself)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path / DB_FILE if path.is_dir() else path
        self._con = open_read_only(self.path)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _df(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        return self._con.cursor().execute(sql, params or []).df()

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        return self._con.cursor().execute(sql, params or []).fetchall()

    def _one(self, sql: str, params: list[Any] | None = None) -> dict[str, Any] | None:
        cursor = self._con.cursor().execute(sql, params or [])
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

    # -- one feature -------------------------------------------------------------------------------

    def feature(self, sae: str | int, feature: int) -> FeaturePage:
        """Everything a feature page shows, in four indexed lookups."""
        sae_id = self.sae_id(sae)
        sae_row = self.sae(sae_id)
        row = self._one("SELECT * FROM features WHERE sae_id = ? AND feature = ?", [sae_id, int(feature)])
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
            examples=self.examples(sae_id, feature),
            neighbours=self.neighbours(sae_id, feature),
        )

    def examples(self, sae_id: int, feature: int) -> pd.DataFrame:
        """Top and interval examples of one feature with their windows' tokens (see `FeaturePage.examples`)."""
        df = self._df(
            """SELECT e.kind, e.rank, e.activation, e.position, e.window_start, e.acts,
                      list_slice(c.token_ids, e.window_start + 1, e.window_start + len(e.acts)) AS token_ids
               FROM examples e JOIN contexts c ON c.context_id = e.context_id
               WHERE e.sae_id = ? AND e.feature = ? ORDER BY e.kind, e.rank""",
            [int(sae_id), int(feature)],
        )
        vocab = self.vocab
        df["tokens"] = [[vocab[t] for t in ids] for ids in df["token_ids"]]
        df["max_index"] = df["position"] - df["window_start"]
        return df

    def neighbours(self, sae_id: int, feature: int) -> dict[str, pd.DataFrame]:
        """Decoder-cosine and co-activation neighbours, with their labels and densities."""
        lists = self._rows(
            "SELECT kind, ids, scores, counts FROM neighbours WHERE sae_id = ? AND feature = ? ORDER BY kind",
            [int(sae_id), int(feature)],
        )
        wanted = sorted({int(i) for _, ids, _, _ in lists for i in ids})
        info = {
            f: (label, density)
            for f, label, density in self._rows(
                "SELECT feature, label, density FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
                [int(sae_id), wanted],
            )
        }
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

    def labels(self, sae: str | int, features: list[int]) -> dict[int, str]:
        """Labels of some features of one SAE (missing ids are left out)."""
        rows = self._rows(
            "SELECT feature, label FROM features WHERE sae_id = ? AND feature IN (SELECT unnest(?))",
            [self.sae_id(sae), [int(f) for f in features]],
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
        sort_by: str = "density",
        descending: bool = True,
        limit: int = 100,
        offset: int = 0,
    ) -> pd.DataFrame:
        """Features filtered by SAE / layer / site, density and max activation, sorted by a column of `SORTABLE`."""
        if sort_by not in SORTABLE:
            raise UserError(f"cannot sort by {sort_by!r}; choose one of {', '.join(SORTABLE)}")
        where, params = self._filters(saes, layers, sites)
        for clause, value in (("f.density >= ?", min_density), ("f.density <= ?", max_density), ("f.max_act >= ?", min_max_act)):
            if value is not None:
                where.append(clause)
                params.append(float(value))
        if not include_dead:
            where.append("NOT f.dead")
        order = f"f.{sort_by} {'DESC' if descending else 'ASC'}, f.sae_id, f.feature"
        return self._df(
            f"""SELECT s.short_name AS sae, f.sae_id, f.feature, f.label, f.density, f.max_act, f.mean_act, f.fires, f.dead
                FROM features f JOIN saes s USING (sae_id)
                WHERE {" AND ".join(where) or "TRUE"} ORDER BY {order} LIMIT ? OFFSET ?""",
            [*params, int(limit), int(offset)],
        )

    def search_label(self, text: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose label contains `text`, case-insensitively and literally (no wildcards), strongest first."""
        where, params = self._filters(saes, None, None)
        where.append("contains(f.label_lower, ?)")
        params.append(text.lower())
        return self._df(
            f"""SELECT s.short_name AS sae, f.sae_id, f.feature, f.label, f.density, f.max_act
                FROM features f JOIN saes s USING (sae_id)
                WHERE {" AND ".join(where)} ORDER BY f.max_act DESC, f.sae_id, f.feature LIMIT ?""",
            [*params, int(limit)],
        )

    def search_token(self, token: str, *, saes: list[int] | None = None, limit: int = 50) -> pd.DataFrame:
        """Features whose top examples peak on `token` or whose logit effects promote it, strongest first.

        `token` matches every vocabulary entry that displays as it (ignoring case and surrounding
        whitespace), or is a token id; the `where` column says which list matched.
        """
        ids = self.token_ids(token)[:MAX_TOKEN_IDS]
        columns = ["sae", "sae_id", "feature", "label", "density", "max_act", "where"]
        if not ids:
            return pd.DataFrame(columns=columns)
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
        df["where"] = [", ".join(w for w, on in (("fires on", f), ("promotes", p)) if on) for f, p in zip(fires, promotes)]
        return df[columns]

    def random_feature(self, sae: str | int | None = None, rng: random.Random | None = None) -> tuple[int, int]:
        """A random live feature `(sae_id, feature)`, of one SAE or any."""
        rng = rng or random.Random()
        where, params = ("WHERE sae_id = ?", [self.sae_id(sae)]) if sae is not None else ("", [])
        counts = self._rows(f"SELECT sae_id, d_sae FROM saes {where} ORDER BY sae_id", params)
        for _ in range(64):  # rejection sampling: cheap lookups instead of a scan over all features
            sae_id, d_sae = rng.choices(counts, weights=[c[1] for c in counts])[0]
            feature = rng.randrange(d_sae)
            if not self._rows("SELECT dead FROM features WHERE sae_id = ? AND feature = ?", [sae_id, feature])[0][0]:
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


def _histogram(counts: Any, top: float) -> pd.DataFrame:
    counts = [int(c) for c in counts]
    width = float(top) / len(counts) if counts else 0.0
    return pd.DataFrame({"low": [i * width for i in range(len(counts))], "high": [(i + 1) * width for i in range(len(counts))], "count": counts})

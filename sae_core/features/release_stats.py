"""A published release's own feature statistics (a "reverse index": per-feature metrics and top prompts in Parquet),
imported into a run's feature file beside ours and marked with their origin, never mixed into our columns.

Releases name their columns differently, so each role (the feature id, its firing count, density, maximum and mean
activation; a prompt's text, activation, token and rank) is read from the first column whose name is one of
`ROLES[role]`, or from the column `columns` names for it. Columns no role reads are kept per row as JSON (`extra`),
so nothing the release says is dropped. The release's summary file, when it has one, is stored as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from ..errors import UserError
from ..options import option
from .amend import amend_each

FEATURE = ("feature", "feature_id", "feature_idx", "feature_index", "latent", "latent_id", "latent_idx", "index")
METRIC_ROLES: dict[str, tuple[str, ...]] = {
    "feature": FEATURE,
    "fires": ("fires", "count", "n_active", "active_count", "activation_count", "n_activations", "num_activations",
              "n_records", "record_count"),
    "density": ("density", "frequency", "freq", "activation_frequency", "firing_rate", "fire_rate", "activation_rate"),
    "max_act": ("max_act", "max_activation", "max_activation_value", "activation_max", "max_value", "max"),
    "mean_act": ("mean_act", "mean_activation", "activation_mean", "avg_activation", "mean_value", "mean"),
}
PROMPT_ROLES: dict[str, tuple[str, ...]] = {
    "feature": FEATURE,
    "rank": ("rank", "prompt_rank", "example_rank"),
    "activation": ("activation", "max_activation", "activation_value", "act", "score", "value"),
    "text": ("text", "prompt", "prompt_text", "context", "snippet", "example", "content", "conversation"),
    "token": ("token", "max_token", "top_token", "activating_token", "token_str"),
}
ROLES = {**METRIC_ROLES, **PROMPT_ROLES}
"""Every role and the column names it is read from, in order of preference (case is ignored)."""
METRICS_NAMES = ("feature_metrics.parquet", "metrics.parquet", "features.parquet")
PROMPTS_NAMES = ("feature_prompts.parquet", "prompts.parquet", "top_prompts.parquet", "examples.parquet")
SUMMARY_NAMES = ("summary.json",)
MAX_SUMMARY_BYTES = 1 << 20


class ReleaseStatsError(UserError):
    """Release statistics that cannot be read, or that do not fit the SAE they are imported for."""


@dataclass(frozen=True)
class ReleaseFiles:
    """The files of one release's statistics: per-feature metrics, top prompts (either may be missing) and a summary."""

    metrics: Path | None
    prompts: Path | None
    summary: Path | None = None


@dataclass(frozen=True)
class ReleaseStatsOptions:
    """The options of `sae-explorer import-stats`."""

    sae: str = option(None, "the run's SAE the statistics are of (short or hook name, e.g. L36R)", required=True)
    origin: str = option("", "what the statistics are marked with in the app (default: the source as given)")
    columns: str = option("", "ROLE=COLUMN pairs for columns the release names otherwise, comma-separated, e.g. "
                          "density=act_rate,text=prompt_preview; roles: " + ", ".join(sorted(set(METRIC_ROLES) | set(PROMPT_ROLES))))
    metrics: str = option("", "the per-feature metrics Parquet file (local or hf:), when it is not called "
                          + " / ".join(METRICS_NAMES))
    prompts: str = option("", "the top prompts Parquet file (local or hf:), when it is not called " + " / ".join(PROMPTS_NAMES))


@dataclass(frozen=True)
class ImportedStats:
    """What `import_release_stats` wrote: rows per table and the column each role was read from."""

    origin: str
    sae: str
    features: int
    examples: int
    columns: dict[str, dict[str, str]]


def find_release_files(folder: Path) -> ReleaseFiles:
    """The metrics, prompts and summary files of a release's statistics folder (the names in `*_NAMES`, at its top
    or up to two levels down, as in `reverse-index/NAME/feature_metrics.parquet` under a repository)."""
    if not folder.is_dir():
        raise ReleaseStatsError(f"{folder} is not a folder; give the folder of a release's statistics, or the files "
                                "with --metrics / --prompts")

    def first(names: tuple[str, ...]) -> Path | None:
        for name in names:
            found = sorted([*folder.glob(name), *folder.glob(f"*/{name}"), *folder.glob(f"*/*/{name}")])
            if len(found) > 1:
                raise ReleaseStatsError(f"{folder} holds {len(found)} files called {name} ({', '.join(str(f.relative_to(folder)) for f in found[:4])}); "
                                        "give the one folder that is meant")
            if found:
                return found[0]
        return None

    files = ReleaseFiles(first(METRICS_NAMES), first(PROMPTS_NAMES), first(SUMMARY_NAMES))
    if files.metrics is None and files.prompts is None:
        parquet = sorted(p.name for p in folder.rglob("*.parquet"))[:6]
        raise ReleaseStatsError(
            f"{folder} has no release statistics: looked for {' / '.join(METRICS_NAMES)} and {' / '.join(PROMPTS_NAMES)}"
            + (f"; it has {', '.join(parquet)}: name them with --metrics / --prompts" if parquet else ""))
    return files


def release_files(source: str, metrics: str = "", prompts: str = "") -> ReleaseFiles:
    """The files of a release's statistics: found by name in `source` (a folder, local or `hf:`), or the files
    `metrics` / `prompts` name (with the folder's summary.json when it has one)."""
    from ..hub import fetch, is_hub

    def local(spec: str) -> Path:
        return fetch(spec) if is_hub(spec) else Path(spec).expanduser()

    if not (metrics or prompts):
        return find_release_files(local(source))
    named = [local(spec) if spec else None for spec in (metrics, prompts)]
    for path in named:
        if path is not None and not path.is_file():
            raise ReleaseStatsError(f"{path} is not a file; --metrics and --prompts name Parquet files")
    summary = local(source) / "summary.json"
    return ReleaseFiles(named[0], named[1], summary if summary.is_file() else None)


def parse_columns(spec: str | None) -> dict[str, str]:
    """`--columns density=act_rate,text=prompt_preview` as {role: column}, checked against the roles."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        role, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not column:
            raise ReleaseStatsError(f"--columns takes ROLE=COLUMN pairs, got {part.strip()!r}")
        if role not in ROLES:
            raise ReleaseStatsError(f"--columns: no role {role!r}; the roles are {', '.join(ROLES)}")
        out[role] = column
    return out


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        with duckdb.connect(":memory:") as con:
            return con.execute("SELECT * FROM read_parquet(?)", [str(path)]).df()
    except duckdb.Error as e:
        raise ReleaseStatsError(f"cannot read {path} as Parquet ({str(e).splitlines()[0]})") from None


def map_columns(frame: pd.DataFrame, roles: dict[str, tuple[str, ...]], given: dict[str, str], path: Path) -> dict[str, str]:
    """{role: the frame's column it is read from}: a column named in `given`, else the first of its role's names."""
    by_lower = {str(c).lower(): str(c) for c in frame.columns}
    found: dict[str, str] = {}
    for role, names in roles.items():
        if role in given:
            if given[role] not in frame.columns:
                raise ReleaseStatsError(f"--columns {role}={given[role]}: {path.name} has no such column; it has "
                                        f"{', '.join(map(str, frame.columns))}")
            found[role] = given[role]
            continue
        match = next((by_lower[n] for n in names if n in by_lower and by_lower[n] not in found.values()), None)
        if match is not None:
            found[role] = match
    if "feature" not in found:
        raise ReleaseStatsError(f"{path.name} has no feature-id column (looked for {', '.join(FEATURE)}); it has "
                                f"{', '.join(map(str, frame.columns))}: name it with --columns feature=COLUMN")
    return found


def _extra(frame: pd.DataFrame, used: set[str]) -> list[str | None]:
    rest = [c for c in frame.columns if c not in used]
    if not rest:
        return [None] * len(frame)
    return [json.dumps(row, default=_json_value) for row in frame[rest].to_dict("records")]


def _json_value(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _features(frame: pd.DataFrame, column: str, d_sae: int, path: Path) -> pd.Series:
    ids = pd.to_numeric(frame[column], errors="coerce")
    if ids.isna().any() or (ids != ids.round()).any():
        raise ReleaseStatsError(f"{path.name}: column {column} is not a whole number in every row; name the feature-id "
                                "column with --columns feature=COLUMN")
    bad = ids[(ids < 0) | (ids >= d_sae)]
    if len(bad):
        raise ReleaseStatsError(f"{path.name}: feature {int(bad.iloc[0])} is outside the SAE's 0 … {d_sae - 1}: these "
                                "statistics are of another SAE (--sae names the one they belong to)")
    return ids.astype("int64")


def _number(frame: pd.DataFrame, mapping: dict[str, str], role: str, path: Path) -> pd.Series | None:
    if role not in mapping:
        return None
    values = pd.to_numeric(frame[mapping[role]], errors="coerce")
    if values.isna().all() and frame[mapping[role]].notna().any():
        raise ReleaseStatsError(f"{path.name}: column {mapping[role]} (read as {role}) holds no numbers; name another "
                                f"with --columns {role}=COLUMN")
    return values


def metrics_rows(frame: pd.DataFrame, mapping: dict[str, str], d_sae: int, path: Path) -> dict[str, Any]:
    """The `release_features` columns (less `sae_id` and `origin`) of a release's per-feature metrics."""
    if not set(mapping) - {"feature"}:
        raise ReleaseStatsError(f"{path.name} has a feature-id column but none of the statistics (fires, density, "
                                f"max_act, mean_act) under a known name; it has {', '.join(map(str, frame.columns))}: "
                                "name them with --columns, e.g. --columns density=COLUMN")
    features = _features(frame, mapping["feature"], d_sae, path)
    if features.duplicated().any():
        raise ReleaseStatsError(f"{path.name}: feature {int(features[features.duplicated()].iloc[0])} has more than one "
                                "row; per-feature metrics hold one row per feature")
    density = _number(frame, mapping, "density", path)
    if density is not None and ((density < 0) | (density > 1)).any():
        raise ReleaseStatsError(f"{path.name}: column {mapping['density']} (read as density) goes outside 0 … 1, so it "
                                "is not a fraction of tokens; name the right column with --columns density=COLUMN")
    fires = _number(frame, mapping, "fires", path)
    return {
        "feature": features.to_numpy(),
        "fires": _arrow(None if fires is None else fires.round(), len(frame), pa.int64()),
        "density": _arrow(density, len(frame), pa.float64()),
        "max_act": _arrow(_number(frame, mapping, "max_act", path), len(frame), pa.float64()),
        "mean_act": _arrow(_number(frame, mapping, "mean_act", path), len(frame), pa.float64()),
        "extra": pa.array(_extra(frame, set(mapping.values())), pa.string()),
    }


def _arrow(values: pd.Series | None, n: int, kind: pa.DataType) -> pa.Array:
    """A column of `kind`, null where the release gives no number (or no column at all)."""
    if values is None:
        return pa.nulls(n, kind)
    return pa.array(values.to_numpy(dtype="float64"), type=pa.float64(), from_pandas=True).cast(kind)


def prompt_rows(frame: pd.DataFrame, mapping: dict[str, str], d_sae: int, path: Path) -> dict[str, Any]:
    """The `release_examples` columns (less `sae_id` and `origin`) of a release's top prompts, ranked within each
    feature (by the release's rank, else by activation, strongest first)."""
    if "text" not in mapping:
        raise ReleaseStatsError(f"{path.name} has no text column (looked for {', '.join(PROMPT_ROLES['text'])}); it has "
                                f"{', '.join(map(str, frame.columns))}: name it with --columns text=COLUMN")
    out = pd.DataFrame({"feature": _features(frame, mapping["feature"], d_sae, path)})
    activation = _number(frame, mapping, "activation", path)
    out["activation"] = activation if activation is not None else math.nan
    out["given_rank"] = _number(frame, mapping, "rank", path) if "rank" in mapping else math.nan
    out["text"] = frame[mapping["text"]].astype("string").fillna("")
    out["token"] = frame[mapping["token"]].astype("string") if "token" in mapping else None
    out["extra"] = _extra(frame, set(mapping.values()))
    order = ["feature", "given_rank", "activation"]
    out = out.sort_values(order, ascending=[True, True, False], na_position="last", kind="stable")
    out["rank"] = out.groupby("feature").cumcount()
    return {
        "feature": out["feature"].to_numpy(), "rank": out["rank"].to_numpy(),
        "activation": _arrow(out["activation"], len(out), pa.float64()),
        "text": out["text"].tolist(), "token": pa.array([None if pd.isna(t) else str(t) for t in out["token"]], pa.string()),
        "extra": pa.array(out["extra"].tolist(), pa.string()),
    }


def read_summary(path: Path | None) -> str | None:
    """The release's summary JSON as text (checked to parse), or None."""
    if path is None:
        return None
    if path.stat().st_size > MAX_SUMMARY_BYTES:
        raise ReleaseStatsError(f"{path} is {path.stat().st_size / 2**20:.1f} MiB; a summary of at most 1 MiB is kept")
    try:
        return json.dumps(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:
        raise ReleaseStatsError(f"{path} is not JSON ({e})") from None


def import_release_stats(run: str | Path, sae: str, files: ReleaseFiles, origin: str, *, columns: dict[str, str] | None = None,
                         log: Callable[[str], None] = lambda _: None) -> ImportedStats:
    """Read a release's statistics and write them into the run's feature file for the SAE `sae` (a short or hook
    name), replacing what an earlier import from the same origin wrote for it; everything is checked before the
    file is touched."""
    from .reader import FeatureStore
    from .writer import insert_columns

    given = columns or {}
    with FeatureStore(run) as store:
        row = store.sae(sae)
    sae_id, d_sae, short = int(row["sae_id"]), int(row["d_sae"]), str(row["short_name"])
    tables: dict[str, dict[str, Any]] = {}
    used: dict[str, dict[str, str]] = {}
    for table, path, roles, make in (("release_features", files.metrics, METRIC_ROLES, metrics_rows),
                                     ("release_examples", files.prompts, PROMPT_ROLES, prompt_rows)):
        if path is None:
            continue
        frame = _read_parquet(path)
        # a role named in --columns is read from whichever file has that column
        mapping = map_columns(frame, roles, {r: c for r, c in given.items() if r in roles and c in frame.columns}, path)
        used[path.name] = mapping
        log(f"{path.name}: {len(frame):,} rows; " + ", ".join(f"{role} ← {column}" for role, column in mapping.items()))
        tables[table] = make(frame, mapping, d_sae, path)
    unknown = {r: c for r, c in given.items() if not any(mapping.get(r) == c for mapping in used.values())}
    if unknown:
        raise ReleaseStatsError("--columns " + ", ".join(f"{r}={c}" for r, c in unknown.items())
                                + ": no statistics file has that column")
    summary = read_summary(files.summary)
    imported = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def write(con: duckdb.DuckDBPyConnection, _: list[int]) -> None:
        for table in ("release_sources", "release_features", "release_examples"):
            con.execute(f"DELETE FROM {table} WHERE sae_id = ? AND origin = ?", [sae_id, origin])
        insert_columns(con, "release_sources", {"sae_id": [sae_id], "origin": [origin], "imported": [imported],
                                                "column_map": [json.dumps(used)], "summary": [summary]})
        for table, rows in tables.items():
            n = len(rows["feature"])
            insert_columns(con, table, {"sae_id": [sae_id] * n, "origin": [origin] * n, **rows})

    amend_each(run, write, sae_id=sae_id)
    return ImportedStats(origin, short, len(tables.get("release_features", {}).get("feature", [])),
                         len(tables.get("release_examples", {}).get("feature", [])), used)

"""`sae-explorer precompute`: one pass of a corpus through the model and every SAE of a run → features.duckdb.

Stages: record sparse activations (resumable, in shards under `RUN/.precompute/`), then per SAE
compute statistics, examples, logit effects, neighbours and labels, and write them all into one
DuckDB file that is renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import RunError, UserError
from ..io import read_json
from ..model.load import LoadedModel
from ..model.sentence_embedder import EMBEDDER_INSTALL, embedder_available, load_embedder
from ..model.sites import Site, parse_sites
from ..options import corpus_option, device_option, option
from ..parallel import Parallel, init_parallel
from ..runs.open_run import open_run_saes
from ..saes import SAE
from ..text.corpus import describe_source, iter_documents
from ..text.tokens import check_context_size, decode_each, token_batches
from .embed import Embedder, embed_features
from .feature_stats import Examples, FeatureStats, feature_stats, select_examples
from .indexes import refresh_indexes
from .keep_explanations import kept_explanations
from .labels import make_label, top_tokens
from .logit_effects import LogitEffects, logit_effects
from .neighbours import Neighbours, coactivation_neighbours, decoder_cosine_neighbours
from .parts import PARTS_DIR
from .record import RecordWriter, read_site, read_token_ids, record_activations
from .schema import DB_FILE, METRIC_COLUMNS, sae_identity
from .split import part_name
from .writer import FeatureDBWriter, list_array, write_parts

WORK_DIR = ".precompute"


@dataclass(frozen=True)
class PrecomputeOptions:
    """What to stream and how much of each statistic to keep: the options of `sae-explorer precompute` (and of
    `import`, which precomputes what it imports)."""

    tokens: int = option(128_000, "real tokens to stream through the model, e.g. 128k, 2M (fewer if the text runs out)",
                         count=True)
    corpus: str | None = corpus_option("the run's own corpus")
    split: str = option("eval", "which split of the corpus: eval = held-out text, never seen in training",
                        choices=("eval", "train", "all"))
    window: int = option(16, "tokens shown on each side of an example's token")
    n_top: int = option(20, "top activating contexts kept per feature", flag="--top")
    n_intervals: int = option(5, "activation-quantile intervals sampled per feature", flag="--intervals")
    per_interval: int = option(4, "examples sampled per interval")
    n_logits: int = option(10, "tokens kept at each end of a feature's logit effects", flag="--logits")
    n_neighbours: int = option(10, "decoder-cosine and co-activation neighbours kept per feature", flag="--neighbours")
    hist_bins: int = option(50, "bins of each feature's activation histogram")
    shard_tokens: int = option(65_536, "tokens per shard of the resumable record of activations", count=True)
    seed: int = option(0, "random seed (which examples each quantile interval shows)")
    device: str = device_option()
    embed: bool = option(True, "embed every feature for search by meaning when the sentence-embedding model is installed")
    saes: str | None = option(None, "only the SAEs at these sites, e.g. L*/3R,L*/3M,L*/3A for every third layer of a "
                              "suite (default: all)")
    per_sae_files: bool = option(
        False, "write RUN/features/, one feature file per SAE, instead of RUN/features.duckdb: under torchrun each rank "
        "writes its own SAEs' files (no merge on rank 0); with --saes, other machines add theirs beside them"
    )

    def __post_init__(self) -> None:
        for name in ("tokens", "n_top", "n_intervals", "n_logits", "hist_bins", "shard_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"precompute option {name} must be at least 1, got {getattr(self, name)}")
        for name in ("window", "per_interval", "n_neighbours"):
            if getattr(self, name) < 0:
                raise UserError(f"precompute option {name} must not be negative, got {getattr(self, name)}")


def _chosen(saes: dict[Site, SAE], spec: str, n_layers: int, run: str) -> dict[Site, SAE]:
    """The SAEs at the sites `spec` names, in the run's order; an error names sites the run has no SAE for."""
    wanted = parse_sites(spec, n_layers)
    missing = [s.short for s in wanted if s not in saes]
    if missing:
        raise UserError(f"--saes {spec}: run {run} has no SAE at {', '.join(missing)}; "
                        f"its SAEs are at {', '.join(s.short for s in saes)}")
    return {s: sae for s, sae in saes.items() if s in wanted}


@dataclass(frozen=True)
class SAEResult:
    """Everything computed for one SAE, ready to write."""

    site: Site
    sae: SAE
    folder: Path
    stats: FeatureStats
    examples: Examples
    logits: LogitEffects
    cosine: Neighbours
    coactivation: Neighbours
    top_token_ids: list[list[int]]
    labels: list[str]


def precompute_run(
    run_path: str | Path,
    options: PrecomputeOptions = PrecomputeOptions(),
    *,
    loaded: LoadedModel | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build `RUN/features.duckdb` for every SAE of the run (or `RUN/features/`, one file per SAE); return its path.

    Under torchrun the ranks share the work: each records every world-th batch of the stream, then
    analyses its share of the SAEs into Parquet parts, which rank 0 loads into the one DuckDB file
    (the same tables as a one-process build), or, with `per_sae_files`, into its SAEs' own files.
    The run folder must be on a filesystem all ranks share.
    """
    par, device = init_parallel(options.device)
    log = log or ((lambda msg: print(msg, file=sys.stderr, flush=True)) if par.main else (lambda msg: None))
    opened = open_run_saes(run_path, loaded=loaded, device=device, log=log)
    run, info, cfg, loaded = opened.run, opened.info, opened.config, opened.loaded
    saes, sae_folders = opened.saes, opened.folders
    run_ids = {site: i for i, site in enumerate(saes)}  # an SAE's id in a file of its own: the same on every machine
    if options.per_sae_files and (run.path / DB_FILE).exists():
        raise UserError(f"{run.path / DB_FILE} exists: per-SAE files would sit unread beside it; split it first with "
                        f"`sae-explorer split {run.path}` (keeps its explanations) or remove it")
    if not options.per_sae_files and (run.path / PARTS_DIR).is_dir():
        raise UserError(f"{run.path / PARTS_DIR} holds this run's features, one file per SAE; precompute with "
                        "--per-sae-files to replace them, or move the folder away for one file")
    if options.saes is not None:
        saes = _chosen(saes, options.saes, loaded.layout.n_layers, str(run_path))
    sites = list(saes)
    context_size = int(cfg.get("context_size", 128))
    check_context_size(context_size, loaded.layout.max_positions, loaded.name)
    corpus = options.corpus if options.corpus is not None else cfg.get("corpus")

    started = time.time()
    fingerprint = {
        "model": info.get("model"),
        "saes": {s.hook_name: _file_stamp(sae_folders[s]) for s in sites},
        "corpus": describe_source(corpus),
        "split": options.split,
        "tokens": options.tokens,
        "context_size": context_size,
        "ranks": par.world,
    }
    work = run.path / WORK_DIR
    recorded = _record(loaded, saes, cfg, options, par, corpus, context_size, fingerprint, work, log)
    build = _Build(run.path, sites, saes, sae_folders, loaded, options, par, recorded, _vocab(loaded), fingerprint,
                   {"model": info.get("model"), "run": str(run.path), "corpus": describe_source(corpus),
                    "split": options.split, "context_size": context_size}, started)
    if options.per_sae_files:
        return _write_per_sae_files(build, run_ids, device, work, log)
    return _write_one_file(build, device, work, log)


@dataclass
class _Recorded:
    """What the recording pass leaves for the analysis: every rank's shards and the contexts' token ids."""

    folders: list[Path]
    token_ids: torch.Tensor
    tokens: int
    stream_seconds: float


def _record(loaded: LoadedModel, saes: dict[Site, SAE], cfg: dict[str, Any], options: PrecomputeOptions, par: Parallel,
            corpus: Any, context_size: int, fingerprint: dict[str, Any], work: Path, log: Callable[[str], None]) -> _Recorded:
    """Stream the text once through the model and every SAE, keeping the non-zero activations in shards (resumable:
    a killed pass goes on from its last shard); each rank records every world-th batch."""
    started = time.time()
    sites = list(saes)
    folders = [work / f"rank-{r:05d}" for r in range(par.world)]
    writer = RecordWriter(folders[par.rank], fingerprint, sites, options.shard_tokens)
    if not writer.complete:
        lm_batch_size = int(cfg.get("lm_batch_size") or 8)
        docs = iter_documents(corpus, options.split, eval_fraction=cfg.get("eval_fraction", 0.05), text_field=cfg.get("text_field"))
        batches = token_batches(docs, loaded.tokenizer, context_size, lm_batch_size)
        for _ in range(writer.lm_batches):  # resume: skip what the shards already hold
            next(batches, None)
        log(
            f"precomputing {len(sites)} SAE(s) at {', '.join(s.short for s in sites)} on up to {options.tokens:,} tokens "
            f"of {describe_source(corpus)} ({options.split} split)"
            + (f", resuming after {writer.counted_tokens:,} tokens" if writer.counted_tokens else "")
            + (f", {par.world} ranks" if par.distributed else "")
        )
        with tqdm(total=options.tokens, initial=writer.counted_tokens, unit="tok", unit_scale=True, desc="encoding",
                  file=sys.stderr, dynamic_ncols=True, disable=not par.main) as bar:
            try:
                record_activations(loaded, saes, batches, writer, options.tokens, progress=bar.update, par=par)
            except UserError:
                if not writer.lm_batches:  # bad text before anything was recorded: leave no work folder behind
                    shutil.rmtree(work, ignore_errors=True)
                raise
    if writer.counted_tokens == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RunError(f"{describe_source(corpus)} has no {options.split} text to precompute on; pass --corpus with more text")
    par.barrier()  # every rank's record is complete
    return _Recorded(folders, read_token_ids(folders), writer.counted_tokens, time.time() - started)


@dataclass
class _Build:
    """What the per-SAE analysis and the file writers share."""

    run: Path
    sites: list[Site]
    saes: dict[Site, SAE]
    sae_folders: dict[Site, Path]
    loaded: LoadedModel
    options: PrecomputeOptions
    par: Parallel
    recorded: _Recorded
    vocab: list[str]
    fingerprint: dict[str, Any]
    source: dict[str, Any]
    started: float

    def rows_of(self, sae_id: int, stored_id: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """One SAE's tables, analysed from the recorded activations (stored under `stored_id` when given)."""
        site = self.sites[sae_id]
        result = _analyse(site, self.saes[site], self.sae_folders[site], self.recorded.folders, self.recorded.token_ids,
                          self.loaded, self.vocab, self.options)
        return _sae_rows(sae_id if stored_id is None else stored_id, result, self.run)

    def meta(self) -> dict[str, Any]:
        return {
            **self.source,
            "tokens": self.recorded.tokens,
            "contexts": int(self.recorded.token_ids.shape[0]),
            "options": asdict(self.options),
            "sae_explorer_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stream_seconds": round(self.recorded.stream_seconds, 1),
            "total_seconds": round(time.time() - self.started, 1),
            "ranks": self.par.world,
            "sae_files": self.fingerprint["saes"],
        }

    def progress(self, items: list[int]) -> Any:
        return tqdm(items, desc="feature statistics", unit="SAE", file=sys.stderr, dynamic_ncols=True,
                    disable=not self.par.main)

    def insert_vocab(self, db: FeatureDBWriter) -> None:
        db.insert("vocab", {"token_id": np.arange(len(self.vocab), dtype=np.int32), "token": self.vocab})


def _write_per_sae_files(b: _Build, run_ids: dict[Site, int], device: torch.device, work: Path,
                         log: Callable[[str], None]) -> Path:
    """`RUN/features/`: each rank writes its SAEs' own files (with the contexts their examples use), no merge."""
    folder = b.run / PARTS_DIR
    kept = kept_explanations(folder, b.fingerprint["saes"])
    embedder = _embedder(device, log) if b.options.embed else None
    for sae_id in b.progress(b.par.mine(list(range(len(b.sites))))):
        site = b.sites[sae_id]
        rows = b.rows_of(sae_id, run_ids[site])
        used = np.unique(next(columns for table, columns in rows if table == "examples")["context_id"])
        with FeatureDBWriter(folder / part_name(site.short), indexes=False) as db:
            b.insert_vocab(db)
            db.insert("contexts", {"context_id": used.astype(np.int32),
                                   "token_ids": list_array(b.recorded.token_ids[used], dtype=pa.int32())})
            for table, columns in rows:
                db.insert(table, columns)
            _insert_kept(db, kept[kept.hook_name == site.hook_name] if len(kept) else kept, {site.hook_name: run_ids[site]})
            if embedder is not None:
                embed_features(db.con, embedder)
            db.finish({**b.meta(), "sae_files": {site.hook_name: b.fingerprint["saes"][site.hook_name]}})
    b.par.barrier()  # every rank's files are written
    if b.par.main:
        refresh_indexes(folder)
        shutil.rmtree(work, ignore_errors=True)
        log(f"wrote {len(b.sites)} feature file(s) into {folder}: {b.recorded.tokens:,} tokens")
    b.par.barrier()
    return folder


def _write_one_file(b: _Build, device: torch.device, work: Path, log: Callable[[str], None]) -> Path:
    """`RUN/features.duckdb`: under torchrun each rank analyses its share of the SAEs into Parquet parts that rank 0
    loads; in one process, one SAE's tables are in memory at a time."""
    ids = list(range(len(b.sites)))
    parts = work / "parts"
    if b.par.distributed:
        for sae_id in b.progress(b.par.mine(ids)):
            write_parts(parts / f"sae-{sae_id:05d}", b.rows_of(sae_id))
        b.par.barrier()
    out = b.run / DB_FILE
    if b.par.main:
        kept = kept_explanations(out, b.fingerprint["saes"])
        token_ids = b.recorded.token_ids
        with FeatureDBWriter(out) as db:
            b.insert_vocab(db)
            db.insert("contexts", {"context_id": np.arange(token_ids.shape[0], dtype=np.int32),
                                   "token_ids": list_array(token_ids, dtype=pa.int32())})
            if b.par.distributed:
                for sae_id in ids:
                    db.insert_parts(parts / f"sae-{sae_id:05d}")
            else:
                for sae_id in b.progress(ids):
                    for table, columns in b.rows_of(sae_id):
                        db.insert(table, columns)
            if _insert_kept(db, kept, {site.hook_name: i for i, site in enumerate(b.sites)}):
                log(f"kept {len(kept)} explanation(s) of the unchanged SAEs from the previous feature file "
                    "(scored on its examples; `explain --overwrite` scores them anew)")
            if b.options.embed and (embedder := _embedder(device, log)) is not None:
                embed_features(db.con, embedder)
            db.finish(b.meta())
        shutil.rmtree(work, ignore_errors=True)
        log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {len(b.sites)} SAE(s), {b.recorded.tokens:,} tokens")
    b.par.barrier()
    return out


def _analyse(
    site: Site, sae: SAE, folder: Path, records: list[Path], token_ids: torch.Tensor, loaded: LoadedModel, vocab: list[str],
    options: PrecomputeOptions,
) -> SAEResult:
    """All statistics of one SAE from its recorded activations and its decoder."""
    d_sae = sae.cfg.d_sae
    acts = read_site(records, site)
    stats = feature_stats(acts, d_sae, options.hist_bins)
    examples = select_examples(
        acts, stats.fires, n_top=options.n_top, n_intervals=options.n_intervals, per_interval=options.per_interval,
        half_width=options.window, seed=options.seed,
    )
    W_dec = sae.W_dec.detach()
    logits = logit_effects(W_dec, loaded.layout, options.n_logits)
    cosine = decoder_cosine_neighbours(W_dec.cpu(), options.n_neighbours)
    coactivation = coactivation_neighbours(acts, d_sae, options.n_neighbours)
    tops = _top_tokens_per_feature(examples, token_ids, d_sae)
    dead = (stats.fires == 0).tolist()
    promoted = logits.top_ids.tolist()
    labels = [make_label(tops[f], promoted[f], vocab, dead[f]) for f in range(d_sae)]
    top_token_ids = [top_tokens(t, 10) for t in tops]
    return SAEResult(site, sae, folder, stats, examples, logits, cosine, coactivation, top_token_ids, labels)


def _top_tokens_per_feature(examples: Examples, token_ids: torch.Tensor, d_sae: int) -> list[list[int]]:
    """Per feature, the token at the maximum of each of its top examples, strongest example first."""
    top = examples.kinds == 0
    feats = examples.features[top].numpy()
    tokens = token_ids[examples.contexts[top], examples.positions[top]].numpy()
    bounds = np.searchsorted(feats, np.arange(d_sae + 1))
    return [tokens[bounds[f] : bounds[f + 1]].tolist() for f in range(d_sae)]


def _sae_rows(sae_id: int, r: SAEResult, run_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of every table for one SAE, as (table, columns) in insertion order."""
    rows: list[tuple[str, dict[str, Any]]] = []
    cfg, stats, d_sae = r.sae.cfg, r.stats, r.sae.cfg.d_sae
    metrics_file = r.folder / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    fires = stats.fires
    alive = fires > 0
    l0 = float(fires.sum()) / max(stats.n_tokens, 1)
    rows.append(("saes", {
        **_identity(sae_id, r.site), "architecture": [cfg.architecture], "d_in": [cfg.d_in], "d_sae": [d_sae], "k": [cfg.k],
        "folder": [str(r.folder.relative_to(run_path)) if r.folder.is_relative_to(run_path) else str(r.folder)],
        "n_tokens": [stats.n_tokens], "l0_precompute": [l0], "dead_fraction_precompute": [1 - float(alive.double().mean())],
        **{m: [metrics.get(m)] for m in METRIC_COLUMNS},
        "metrics": [json.dumps(metrics) if metrics else None],
    }))
    ids = np.full(d_sae, sae_id, dtype=np.int32)
    feature = np.arange(d_sae, dtype=np.int32)
    rows.append(("features", {
        "sae_id": ids, "feature": feature, "fires": fires.numpy(), "density": stats.density.numpy(),
        "max_act": stats.max_act.numpy(), "mean_act": stats.mean_act.numpy(), "dead": (~alive).numpy(),
        "hist_max": stats.max_act.numpy(), "hist_counts": list_array(stats.hist_counts.to(torch.int32), dtype=pa.int32()),
        "top_logit_ids": list_array(r.logits.top_ids.to(torch.int32), dtype=pa.int32()),
        "top_logit_values": list_array(r.logits.top_values),
        "bottom_logit_ids": list_array(r.logits.bottom_ids.to(torch.int32), dtype=pa.int32()),
        "bottom_logit_values": list_array(r.logits.bottom_values),
        "top_token_ids": pa.array(r.top_token_ids, type=pa.list_(pa.int32())),
        "label": r.labels,
        "label_lower": [label.lower() for label in r.labels],
    }))
    ex = r.examples
    lengths = (~ex.windows.isnan()).sum(1)
    rows.append(("examples", {
        "sae_id": np.full(ex.features.numel(), sae_id, dtype=np.int32), "feature": ex.features.to(torch.int32).numpy(),
        "kind": ex.kinds.to(torch.int8).numpy(), "rank": ex.ranks.to(torch.int16).numpy(),
        "context_id": ex.contexts.to(torch.int32).numpy(), "position": ex.positions.to(torch.int16).numpy(),
        "activation": ex.activations.numpy(), "window_start": ex.starts.to(torch.int16).numpy(),
        "acts": list_array(ex.windows, lengths),
    }))
    for kind, nb in (("decoder_cosine", r.cosine), ("coactivation", r.coactivation)):
        n = (nb.ids >= 0).sum(1)
        rows.append(("neighbours", {
            "sae_id": ids, "feature": feature, "kind": [kind] * d_sae,
            "ids": list_array(nb.ids.to(torch.int32), n, dtype=pa.int32()),
            "scores": list_array(nb.scores, n),
            "counts": list_array(nb.counts.to(torch.int32), n, dtype=pa.int32()) if nb.counts is not None else pa.nulls(d_sae, pa.list_(pa.int32())),
        }))
    rows.append(("site_summary", _site_summary(sae_id, r, l0)))
    return rows


def _identity(sae_id: int, site: Site) -> dict[str, list[Any]]:
    return sae_identity(sae_id, site.hook_name, site.short, site.layer, site.kind)


def _site_summary(sae_id: int, r: SAEResult, l0: float) -> dict[str, list[Any]]:
    """One row of per-site figures for the layer comparison page."""
    stats = r.stats
    alive = stats.fires > 0
    density = stats.density[alive]
    edges = np.linspace(-7.0, 0.0, 29)
    counts = np.histogram(np.clip(np.log10(density.numpy()), -7.0, 0.0), bins=edges)[0] if alive.any() else np.zeros(28, int)
    q = (lambda t, p: float(t.quantile(p)) if t.numel() else None)  # noqa: E731
    return {
        **_identity(sae_id, r.site), "d_sae": [r.sae.cfg.d_sae], "n_tokens": [stats.n_tokens], "alive": [int(alive.sum())],
        "dead_fraction": [1 - float(alive.double().mean())], "l0": [l0],
        "density_p10": [q(density, 0.1)], "density_median": [q(density, 0.5)], "density_p90": [q(density, 0.9)],
        "max_act_median": [q(stats.max_act[alive].double(), 0.5)],
        "log10_density_edges": [edges.tolist()], "log10_density_counts": [counts.astype(int).tolist()],
    }


def _insert_kept(db: FeatureDBWriter, kept: Any, ids: dict[str, int]) -> int:
    """Add the explanations carried over from the previous build, under the SAEs' new ids; how many."""
    if len(kept):
        db.insert("explanations", kept.assign(sae_id=kept.hook_name.map(ids)).drop(columns="hook_name").to_dict("list"))
    return len(kept)


def _embedder(device: torch.device, log: Callable[[str], None]) -> Embedder | None:
    """The model that embeds every feature for search by meaning (loaded once per build), or None when it is not
    installed (said in the log)."""
    if not embedder_available():
        log(f"not embedding features for search by meaning: the model is not installed ({EMBEDDER_INSTALL})")
        return None
    return load_embedder(device=device)


def _vocab(loaded: LoadedModel) -> list[str]:
    """Display string of every id the unembedding has (ids past the tokenizer show as `<id>`)."""
    n = loaded.layout.unembed.weight.shape[0]
    known = min(n, len(loaded.tokenizer))
    texts = decode_each(loaded.tokenizer, range(known))
    return texts + [f"<{i}>" for i in range(known, n)]


def _file_stamp(folder: Path) -> list[Any]:
    """Names, sizes and modification times of an SAE folder's files: changes when the SAE does."""
    return sorted([p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in folder.iterdir() if p.is_file() and p.name != "metrics.json")

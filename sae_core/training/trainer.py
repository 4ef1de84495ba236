"""Train SAEs at many sites of one model from one stream of LM forward passes.

Text → packed contexts → one forward pass to the deepest site → per-site chunks of
real-token activations → each site's SAE steps through its shuffled chunk. Resumable:
a checkpoint at a chunk boundary holds everything needed to continue bit-for-bit.

Under `torchrun` the ranks share the LM work and either every SAE (`--parallel data`: each rank
takes a slice of every batch, gradients are summed) or the sites (`--parallel sites`: each rank
trains its own SAEs). Both give the SAEs one process would, and a checkpoint (one file per site)
resumes on any number of ranks.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..activations.cache import cached_chunks, check_cache
from ..activations.harvest import Chunk, SiteStats, harvest_chunks
from ..activations.outliers import METADATA_KEY as OUTLIER_KEY
from ..errors import UserError
from ..io import read_json, write_json
from ..loading import save_sae
from ..model.batch_size import dtype_named, resolve_lm_batch_size
from ..model.load import LoadedModel, load_model
from ..model.sites import Site, parse_sites
from ..parallel import Parallel, RankBatch, all_reduce_, broadcast_params, init_parallel, site_owners
from ..parallel.sharded_harvest import gather_chunk, sharded_chunks
from ..runs.run_folder import RunDir
from ..saes import ARCHITECTURES, SAEConfig, SAETrainingOptions, create_training_sae
from ..saes.base import LOCAL_BATCH
from ..text.corpus import describe_source, iter_documents
from ..text.tokens import TokenBatch, check_context_size, token_batches
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .site_trainer import SiteTrainer, site_seed

CHECKPOINT_VERSION = 3  # 2: the encoder is stored as W_enc_T; 3: one file per site, per-site shuffles
_INIT_SAMPLE = 32_768  # rows used to initialise b_dec


def validate(cfg: TrainConfig, d_in: int) -> int:
    """Check the SAE options against each other and the model; return d_sae."""
    if cfg.arch not in ARCHITECTURES:
        raise UserError(f"unknown --arch {cfg.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    d_sae = cfg.d_sae or cfg.expansion * d_in
    if d_sae < 1:
        raise UserError("--expansion / --d-sae must give at least one latent")
    if cfg.arch in ("topk", "batchtopk") and not 0 < cfg.k <= d_sae:
        raise UserError(f"--k {cfg.k} must be between 1 and d_sae ({d_sae})")
    if cfg.tokens < cfg.batch_size:
        raise UserError(f"--tokens {cfg.tokens} is less than one batch (--batch-size {cfg.batch_size})")
    dtype_named(cfg.sae_dtype, "--sae-dtype")
    if cfg.sae_dtype != "float32" and cfg.arch not in ("topk", "batchtopk"):
        raise UserError(f"--sae-dtype {cfg.sae_dtype} applies to topk and batchtopk only; use float32 with --arch {cfg.arch}")
    _training_options(cfg)  # checks the architecture knobs (b_dec_init, coefficients) before anything is written
    return d_sae


def check_job(cfg: TrainConfig, loaded: LoadedModel, par: Parallel) -> tuple[list[Site], int, list[int | None]]:
    """Check the configuration against the model and the job's ranks; return the sites, d_sae and site owners."""
    sites = parse_sites(cfg.sites, loaded.layout.n_layers)
    check_context_size(cfg.context_size, loaded.layout.max_positions, loaded.name)
    d_sae = validate(cfg, loaded.layout.d_model)
    transcoders = [s.short for s in sites if s.is_transcoder]
    if transcoders and cfg.arch != "topk":
        raise UserError(f"transcoder sites ({', '.join(transcoders)}) train with --arch topk only; drop them or use --arch topk")
    owners = site_owners(len(sites), par, cfg.parallel)
    if par.distributed and cfg.parallel == "data" and cfg.batch_size % par.world:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the {par.world} ranks of a data-parallel job")
    return sites, d_sae, owners


def training_batches(
    cfg: TrainConfig, loaded: LoadedModel, log: Callable[[str], None], lm_batch_size: int | None = None
) -> Iterator[TokenBatch]:
    """Packed training batches, looping over the corpus (with a notice) when it runs out."""
    for epoch in itertools.count():
        if epoch:
            log(f"the training split of the corpus is exhausted; starting pass {epoch + 1} over it")
        docs = iter_documents(cfg.corpus, "train", eval_fraction=cfg.eval_fraction, text_field=cfg.text_field)
        produced = False
        for batch in token_batches(docs, loaded.tokenizer, cfg.context_size, lm_batch_size or cfg.lm_batch_size):
            produced = True
            yield batch
        if not produced:
            raise UserError(
                f"the corpus holds fewer tokens than one context of {cfg.context_size}; use more text or a smaller --context-size"
            )


def _training_options(cfg: TrainConfig) -> SAETrainingOptions:
    """The architecture knobs of the run config, in the SAE's own options type."""
    extra = {"l0_coefficient": cfg.l0_coefficient} if cfg.l0_coefficient is not None else {}
    return SAETrainingOptions(
        auxk_alpha=cfg.auxk_alpha, l1_coefficient=cfg.l1_coefficient, b_dec_init=cfg.b_dec_init, **extra  # type: ignore[arg-type]
    )


def _sae_config(cfg: TrainConfig, loaded: LoadedModel, site: Site, d_sae: int) -> SAEConfig:
    return SAEConfig(
        architecture=cfg.arch,
        d_in=loaded.layout.d_model,
        d_sae=d_sae,
        k=cfg.k if cfg.arch in ("topk", "batchtopk") else None,
        hook_name=site.hook_name,
        hook_name_out=site.hook_name_out,
        d_out=loaded.layout.d_model if site.is_transcoder else None,
        model_name=loaded.name,
        context_size=cfg.context_size,
        dataset_path=describe_source(cfg.corpus),
    )


class MultiSiteTrainer:
    """The sites this rank trains: their trainers, the shared token stream and the run folder."""

    def __init__(
        self, cfg: TrainConfig, run: RunDir, loaded: LoadedModel, sites: list[Site], d_sae: int, log: Callable[[str], None],
        par: Parallel = Parallel(), owners: list[int | None] | None = None,
    ):
        self.cfg, self.run, self.loaded, self.sites, self.d_sae, self.log = cfg, run, loaded, sites, d_sae, log
        self.par = par
        self.owners = owners or [None] * len(sites)
        self.owned = [s for s, o in zip(sites, self.owners) if o is None or o == par.rank]
        # data parallel: every rank trains every SAE on its slice of each batch
        self.scope = RankBatch(par) if par.distributed and all(o is None for o in self.owners) else LOCAL_BATCH
        self.trainers: list[SiteTrainer] = []
        self.lm_batches = 0

    def writes(self, site: Site) -> bool:
        """Whether this rank writes `site`'s files: its owner, or rank 0 for SAEs every rank trains."""
        owner = self.owners[self.sites.index(site)]
        return self.par.main if owner is None else owner == self.par.rank

    @property
    def tokens(self) -> int:
        """Training tokens every SAE of the job has seen so far (the minimum over all ranks)."""
        local = min((t.tokens for t in self.trainers), default=0)
        if not self.par.distributed:
            return local
        return int(all_reduce_(torch.tensor([local], dtype=torch.long), "min"))

    def all_done(self) -> bool:
        done = torch.tensor([int(all(t.done for t in self.trainers))])
        return bool(all_reduce_(done, "min")) if self.par.distributed else bool(done)

    def start(self, first: Chunk) -> None:
        """Create each site's SAE, estimate its activation statistics and initialise it, from the first chunk."""
        options = _training_options(self.cfg)
        for site in self.owned:
            rows = first.acts[site]
            if first.batch_rows is not None:  # data parallel: statistics and init from the whole chunk, once
                rows = gather_chunk(rows, first.batch_rows, None, self.par)
            stats = SiteStats.estimate(rows, self.cfg.outlier_factor, self.cfg.normalize,
                                       self.loaded.layout.d_model if site.is_transcoder else None)
            generator = torch.Generator().manual_seed(site_seed(self.cfg.seed, site, "init"))
            sae = create_training_sae(_sae_config(self.cfg, self.loaded, site, self.d_sae), options, generator)
            sae = sae.to(rows.device)
            sae.init_from_data(stats.scale_(rows[stats.keep_mask(rows)][:_INIT_SAMPLE]))
            self._place(sae)
            if self.scope.world > 1:
                broadcast_params(sae)  # identical on every rank even if initialisation differs in the last bit
            self.trainers.append(SiteTrainer(site, sae, stats, self.cfg))

    def _place(self, sae: Any) -> None:
        """Give a training SAE this job's batch scope and the precision it selects latents in."""
        sae.batch = self.scope
        sae.select_dtype = None if self.cfg.sae_dtype == "float32" else dtype_named(self.cfg.sae_dtype, "--sae-dtype")

    def site_stats(self) -> dict[str, dict[str, float | None]]:
        """Every site's activation statistics (gathered from the ranks that own them)."""
        table = torch.zeros(len(self.sites), 4, dtype=torch.float64)
        for t in self.trainers:
            if self.writes(t.site):
                d = t.stats.to_dict()
                table[self.sites.index(t.site)] = torch.tensor(
                    [d["mean_norm"], d["median_norm"], float("nan") if d["outlier_threshold"] is None else d["outlier_threshold"], d["scale"]]
                )
        all_reduce_(table)
        out = {}
        for site, (mean, median, threshold, scale) in zip(self.sites, table.tolist()):
            out[site.hook_name] = {"mean_norm": mean, "median_norm": median, "outlier_threshold": None if threshold != threshold else threshold, "scale": scale}
        return out

    def checkpoint(self) -> None:
        """One file per site (by the rank that writes it), then the manifest that names them (by rank 0)."""
        folder = self.run.checkpoint_dir
        files = {s.hook_name: f"{s.hook_name}.{self.lm_batches}.safetensors" for s in self.sites}
        for t in self.trainers:
            tensors, meta = t.state("")  # on every rank: a data-parallel carry is gathered from all of them
            if self.writes(t.site):
                save_checkpoint(folder / files[t.site.hook_name], tensors, meta)
        self.par.barrier()
        if self.par.main:
            write_json(self.run.checkpoint_path, {
                "version": CHECKPOINT_VERSION, "lm_batches": self.lm_batches, "fingerprint": self.cfg.fingerprint(), "sites": files,
            })
            for old in folder.glob("*.safetensors"):
                if old.name not in files.values():
                    old.unlink(missing_ok=True)
        self.par.barrier()

    def restore(self, device: torch.device) -> None:
        """Continue from the manifest's checkpoint, whatever number of ranks wrote it."""
        manifest = self.run.checkpoint_path
        meta = read_json(manifest) if manifest.is_file() else {}
        if meta.get("version") != CHECKPOINT_VERSION or meta.get("fingerprint") != self.cfg.fingerprint():
            raise UserError(
                f"the checkpoint in {self.run.checkpoint_dir} does not belong to this configuration or version; "
                "pass --overwrite to restart"
            )
        options = _training_options(self.cfg)
        for site in self.owned:
            tensors, site_meta = load_checkpoint(self.run.checkpoint_dir / meta["sites"][site.hook_name])
            sae = create_training_sae(_sae_config(self.cfg, self.loaded, site, self.d_sae), options).to(device)
            self._place(sae)
            trainer = SiteTrainer(site, sae, SiteStats(**site_meta["stats"]), self.cfg)
            trainer.load_state(tensors, site_meta, "")
            self.trainers.append(trainer)
        self.lm_batches = int(meta["lm_batches"])

    def run_chunks(self, chunks: Iterator[Chunk], info: dict[str, Any], stop_after_tokens: int | None) -> bool:
        """Train on chunks until every SAE has its tokens; False when stopped early at a checkpoint."""
        cfg = self.cfg
        total = -(-cfg.tokens // cfg.batch_size) * cfg.batch_size
        last_ckpt = shown = self.tokens
        fvu: dict[str, float] = {}  # each SAE's latest training FVU, kept once it is done (no more steps to log)
        timing = info.setdefault("timing", {"lm_seconds": 0.0, "sae_seconds": 0.0})
        with tqdm(total=total, initial=last_ckpt, unit="tok", unit_scale=True, desc="training", dynamic_ncols=True,
                  file=sys.stderr, disable=not self.par.main) as bar:
            for chunk in _timed(chunks, timing):
                fed = time.perf_counter()
                self.lm_batches += chunk.lm_batches
                if not self.trainers:
                    self.start(chunk)
                    info["site_stats"] = self.site_stats()
                    if self.par.main:
                        self.run.write(info)
                for t in self.trainers:
                    if t.done:
                        continue
                    if chunk.batch_rows is not None:
                        t.feed_rank_rows(chunk.acts[t.site], chunk.batch_rows)
                    else:
                        t.feed(chunk.acts[t.site])
                tokens = self.tokens
                timing["sae_seconds"] += time.perf_counter() - fed
                bar.update(tokens - shown)
                shown = tokens
                records = {t.site: t.pop_log() for t in self.trainers}
                fvu.update({s.short: float(r["fvu"]) for s, r in records.items() if "fvu" in r})
                bar.set_postfix_str("  ".join(f"{short} fvu {value:.3f}" for short, value in fvu.items())[:120])
                for s, r in records.items():
                    if self.writes(s):
                        self.run.append_log({"site": s.short, "lm_batches": self.lm_batches, **r})
                if self.all_done():
                    return True
                if tokens - last_ckpt >= cfg.checkpoint_every:
                    if self.par.main:
                        self.run.write(info)  # the timing so far, kept with the checkpoint for a resumed run
                    self.checkpoint()
                    last_ckpt = tokens
                    if stop_after_tokens is not None and tokens >= stop_after_tokens:
                        return False
        return self.all_done()

    def save(self, corpus: str) -> None:
        """Write every SAE in canonical SAELens form (each by the rank that writes it)."""
        for t in self.trainers:
            if self.writes(t.site):
                save_sae(t.to_inference(), self.run.sae_dir(t.site.hook_name), extra_metadata=_sae_metadata(self.cfg, t, corpus))
        self.par.barrier()


def train(cfg: TrainConfig, *, log: Callable[[str], None] | None = None, stop_after_tokens: int | None = None) -> RunDir:
    """Train one SAE per site as configured and save them (SAELens format) under `cfg.out`.

    `stop_after_tokens` stops early, right after a checkpoint at or beyond that many tokens per
    SAE (`--stop-after`), so a job with a time limit can continue later with the same command.
    Launched by torchrun, every rank calls this; see the module docstring for what each does.
    """
    par, device = init_parallel(cfg.device)
    log = log or _rank_log(par)
    run = RunDir(cfg.out)
    if par.main:
        resume = run.prepare_training(cfg.fingerprint(), cfg.overwrite)
    par.barrier()
    if not par.main:
        resume = run.has_checkpoint  # rank 0 has kept or cleared it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    log(f"loading model {cfg.model or 'embedded SmolLM2-135M-Instruct'} …")
    loaded = load_model(cfg.model, device=device, dtype=dtype_named(cfg.lm_dtype, "--lm-dtype"))
    layout = loaded.layout
    sites, d_sae, owners = check_job(cfg, loaded, par)
    # a resumed run keeps the batch size it measured: the checkpoint counts LM batches
    measured = (run.read() or {}).get("parallel", {}).get("lm_batch_size") if resume else None
    lm_batch_size = measured or resolve_lm_batch_size(cfg.lm_batch_size, loaded, sites, cfg.context_size)
    if cfg.activation_cache:
        cache = check_cache(cfg.activation_cache, loaded.name, sites)
        corpus = f"activation cache {cfg.activation_cache} of {cache.get('corpus', 'unknown text')}"
    else:
        corpus = describe_source(cfg.corpus)
        batches = training_batches(cfg, loaded, log, lm_batch_size)
        # Reading and tokenizing the start of the corpus here makes bad text fail before anything is written.
        batches = itertools.chain([next(batches)], batches)
    log(
        f"training {len(sites)} {cfg.arch} SAE(s) (d_in {layout.d_model}, d_sae {d_sae}) at "
        f"{', '.join(s.short for s in sites)} on {cfg.tokens:,} tokens each from {corpus}"
        + (f"; {par.world} ranks, {cfg.parallel} parallel" if par.distributed else "")
    )
    info = _run_info(cfg, run, loaded, sites, corpus, resume)
    info["parallel"] = {"ranks": par.world, "mode": cfg.parallel, "lm_batch_size": lm_batch_size}
    if par.main:
        run.write(info)

    trainer = MultiSiteTrainer(cfg, run, loaded, sites, d_sae, log, par, owners)
    if resume:
        trainer.restore(device)
        log(f"resuming from the checkpoint at {trainer.tokens:,} tokens per SAE")
    if cfg.activation_cache:
        chunks = cached_chunks(cfg.activation_cache, trainer.owned, trainer.lm_batches, log)
    else:
        remaining = itertools.islice(batches, trainer.lm_batches, None)
        if par.distributed:
            chunks = sharded_chunks(loaded, sites, owners, remaining, cfg.chunk_tokens, par)
        else:
            chunks = harvest_chunks(loaded, sites, remaining, cfg.chunk_tokens)
    started = time.time()
    if not trainer.run_chunks(chunks, info, stop_after_tokens):
        log(f"stopped after the checkpoint at {trainer.tokens:,} tokens per SAE, as asked")
        return run
    trainer.save(corpus)
    if par.main:
        info.update(
            status="complete",
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            train_seconds=round(time.time() - started, 1),
            lm_batches=trainer.lm_batches,
        )
        run.write(info)
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        log(f"saved {len(sites)} SAE(s) under {run.saes_dir}")
    par.barrier()
    return run


def _timed(chunks: Iterator[Chunk], timing: dict[str, float]) -> Iterator[Chunk]:
    """Chunks, adding the seconds spent producing each (LM forward passes and harvest, or cache reads) to `timing`."""
    it = iter(chunks)
    while True:
        start = time.perf_counter()
        chunk = next(it, None)
        if chunk is None:
            return
        timing["lm_seconds"] += time.perf_counter() - start
        yield chunk


def _rank_log(par: Parallel) -> Callable[[str], None]:
    """Messages to stderr: from rank 0 only, so a job of many ranks says each thing once."""
    if not par.main:
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _run_info(cfg: TrainConfig, run: RunDir, loaded: LoadedModel, sites: list[Site], corpus: str, resume: bool) -> dict[str, Any]:
    """The contents of run.json at the start of training (keeping `created` of a resumed run)."""
    previous = run.read() if resume else None
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "name": run.path.name,
        "status": "training",
        "created": (previous or {}).get("created", now),
        "sae_explorer_version": __version__,
        "model": loaded.name,
        "n_layers": loaded.layout.n_layers,
        "d_model": loaded.layout.d_model,
        "sites": [s.hook_name for s in sites],
        "corpus": corpus,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(),
        **{key: previous[key] for key in ("site_stats", "timing") if previous and key in previous},
    }


def _sae_metadata(cfg: TrainConfig, t: SiteTrainer, corpus: str) -> dict[str, Any]:
    """Training facts recorded in each SAE's cfg.json metadata."""
    return {
        "training_architecture": cfg.arch,
        "training_tokens": t.tokens,
        "activation_scale_folded": t.stats.scale,
        **({"activation_scale_out_folded": t.stats.scale_out} if t.stats.scale_out is not None else {}),
        OUTLIER_KEY: t.stats.outlier_threshold,
        "outlier_factor": cfg.outlier_factor,
        "median_norm": t.stats.median_norm,
        "corpus": corpus,
        "seed": cfg.seed,
        "excludes": "position 0 and special tokens (BOS/EOS/PAD, chat markers) of every context",
    }

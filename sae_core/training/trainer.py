"""Train SAEs at many sites of one model from one stream of LM forward passes.

Text → packed contexts → one forward pass to the deepest site → per-site chunks of
real-token activations → each site's SAE steps through its shuffled chunk. Resumable:
a checkpoint at a chunk boundary holds everything needed to continue bit-for-bit.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..activation_cache import cached_chunks, check_cache
from ..corpus import describe_source, iter_documents
from ..devices import resolve_device
from ..errors import UserError
from ..harvest import Chunk, SiteStats, harvest_chunks
from ..loading import save_sae
from ..models import LoadedModel, load_model
from ..runs import RunDir
from ..saes import ARCHITECTURES, SAEConfig, SAETrainingOptions, create_training_sae
from ..sites import Site, parse_sites
from ..tokens import TokenBatch, check_context_size, token_batches
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .site_trainer import SiteTrainer

CHECKPOINT_VERSION = 2  # 2: the encoder is stored as W_enc_T
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
    _training_options(cfg)  # checks the architecture knobs (b_dec_init, coefficients) before anything is written
    return d_sae


def training_batches(cfg: TrainConfig, loaded: LoadedModel, log: Callable[[str], None]) -> Iterator[TokenBatch]:
    """Packed training batches, looping over the corpus (with a notice) when it runs out."""
    for epoch in itertools.count():
        if epoch:
            log(f"the training split of the corpus is exhausted; starting pass {epoch + 1} over it")
        docs = iter_documents(cfg.corpus, "train", eval_fraction=cfg.eval_fraction, text_field=cfg.text_field)
        produced = False
        for batch in token_batches(docs, loaded.tokenizer, cfg.context_size, cfg.lm_batch_size):
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
        model_name=loaded.name,
        context_size=cfg.context_size,
        dataset_path=describe_source(cfg.corpus),
    )


class MultiSiteTrainer:
    """All the sites of one run: their trainers, the shared token stream and the run folder."""

    def __init__(self, cfg: TrainConfig, run: RunDir, loaded: LoadedModel, sites: list[Site], d_sae: int, log: Callable[[str], None]):
        self.cfg, self.run, self.loaded, self.sites, self.d_sae, self.log = cfg, run, loaded, sites, d_sae, log
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.trainers: list[SiteTrainer] = []
        self.lm_batches = 0

    @property
    def tokens(self) -> int:
        """Training tokens every SAE has seen so far."""
        return min((t.tokens for t in self.trainers), default=0)

    def start(self, first: dict[Site, torch.Tensor]) -> None:
        """Create each site's SAE, estimate its activation statistics and initialise it, from the first chunk."""
        options = _training_options(self.cfg)
        for i, site in enumerate(self.sites):
            rows = first[site]
            stats = SiteStats.estimate(rows, self.cfg.outlier_factor, self.cfg.normalize)
            generator = torch.Generator().manual_seed(self.cfg.seed * 10_007 + i)
            sae = create_training_sae(_sae_config(self.cfg, self.loaded, site, self.d_sae), options, generator)
            sae = sae.to(rows.device)
            sae.init_from_data(rows[stats.keep_mask(rows)][:_INIT_SAMPLE] * stats.scale)
            self.trainers.append(SiteTrainer(site, sae, stats, self.cfg))

    def checkpoint(self) -> None:
        tensors: dict[str, torch.Tensor] = {"shuffle_generator": self.shuffle.get_state()}
        meta: dict[str, Any] = {
            "version": CHECKPOINT_VERSION, "lm_batches": self.lm_batches, "fingerprint": self.cfg.fingerprint(), "sites": {}
        }
        for t in self.trainers:
            t_tensors, t_meta = t.state(f"{t.site.short}.")
            tensors.update(t_tensors)
            meta["sites"][t.site.short] = t_meta
        save_checkpoint(self.run.checkpoint_path, tensors, meta)

    def restore(self, device: torch.device) -> None:
        tensors, meta = load_checkpoint(self.run.checkpoint_path)
        if meta.get("version") != CHECKPOINT_VERSION or meta.get("fingerprint") != self.cfg.fingerprint():
            raise UserError(
                f"checkpoint {self.run.checkpoint_path} does not belong to this configuration; pass --overwrite to restart"
            )
        self.shuffle.set_state(tensors["shuffle_generator"])
        options = _training_options(self.cfg)
        for site in self.sites:
            site_meta = meta["sites"][site.short]
            sae = create_training_sae(_sae_config(self.cfg, self.loaded, site, self.d_sae), options).to(device)
            trainer = SiteTrainer(site, sae, SiteStats(**site_meta["stats"]), self.cfg)
            trainer.load_state(tensors, site_meta, f"{site.short}.")
            self.trainers.append(trainer)
        self.lm_batches = int(meta["lm_batches"])

    def run_chunks(self, chunks: Iterator[Chunk], info: dict[str, Any], stop_after_tokens: int | None) -> bool:
        """Train on chunks until every SAE has its tokens; False when stopped early at a checkpoint."""
        cfg = self.cfg
        total = -(-cfg.tokens // cfg.batch_size) * cfg.batch_size
        last_ckpt = self.tokens
        with tqdm(total=total, initial=self.tokens, unit="tok", unit_scale=True, desc="training", dynamic_ncols=True, file=sys.stderr) as bar:
            for chunk in chunks:
                self.lm_batches += chunk.lm_batches
                if not self.trainers:
                    self.start(chunk.acts)
                    info["site_stats"] = {t.site.hook_name: t.stats.to_dict() for t in self.trainers}
                    self.run.write(info)
                before = self.tokens
                for t in self.trainers:
                    if not t.done:
                        t.feed(chunk.acts[t.site], self.shuffle)
                bar.update(self.tokens - before)
                records = {t.site.short: t.pop_log() for t in self.trainers}
                bar.set_postfix_str("  ".join(f"{s} fvu {r.get('fvu', float('nan')):.3f}" for s, r in records.items())[:120])
                for s, r in records.items():
                    self.run.append_log({"site": s, "lm_batches": self.lm_batches, **r})
                if all(t.done for t in self.trainers):
                    return True
                if self.tokens - last_ckpt >= cfg.checkpoint_every:
                    self.checkpoint()
                    last_ckpt = self.tokens
                    if stop_after_tokens is not None and self.tokens >= stop_after_tokens:
                        return False
        return all(t.done for t in self.trainers)

    def save(self, corpus: str) -> None:
        """Write every SAE in canonical SAELens form."""
        for t in self.trainers:
            save_sae(t.to_inference(), self.run.sae_dir(t.site.hook_name), extra_metadata=_sae_metadata(self.cfg, t, corpus))


def train(cfg: TrainConfig, *, log: Callable[[str], None] | None = None, stop_after_tokens: int | None = None) -> RunDir:
    """Train one SAE per site as configured and save them (SAELens format) under `cfg.out`.

    `stop_after_tokens` stops early, right after a checkpoint at or beyond that many tokens per
    SAE (`--stop-after`), so a job with a time limit can continue later with the same command.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run = RunDir(cfg.out)
    resume = run.prepare_training(cfg.fingerprint(), cfg.overwrite)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)

    log(f"loading model {cfg.model or 'embedded SmolLM2-135M-Instruct'} …")
    loaded = load_model(cfg.model, device=device)
    layout = loaded.layout
    sites = parse_sites(cfg.sites, layout.n_layers)
    check_context_size(cfg.context_size, layout.max_positions, loaded.name)
    d_sae = validate(cfg, layout.d_model)
    if cfg.activation_cache:
        cache = check_cache(cfg.activation_cache, loaded.name, sites)
        corpus = f"activation cache {cfg.activation_cache} of {cache.get('corpus', 'unknown text')}"
    else:
        corpus = describe_source(cfg.corpus)
        batches = training_batches(cfg, loaded, log)
        # Reading and tokenizing the start of the corpus here makes bad text fail before anything is written.
        batches = itertools.chain([next(batches)], batches)
    log(
        f"training {len(sites)} {cfg.arch} SAE(s) (d_in {layout.d_model}, d_sae {d_sae}) at "
        f"{', '.join(s.short for s in sites)} on {cfg.tokens:,} tokens each from {corpus}"
    )
    info = _run_info(cfg, run, loaded, sites, corpus, resume)
    run.write(info)

    trainer = MultiSiteTrainer(cfg, run, loaded, sites, d_sae, log)
    if resume:
        trainer.restore(device)
        log(f"resuming from the checkpoint at {trainer.tokens:,} tokens per SAE")
    if cfg.activation_cache:
        chunks = cached_chunks(cfg.activation_cache, sites, trainer.lm_batches, log)
    else:
        chunks = harvest_chunks(loaded, sites, itertools.islice(batches, trainer.lm_batches, None), cfg.chunk_tokens)
    started = time.time()
    if not trainer.run_chunks(chunks, info, stop_after_tokens):
        log(f"stopped after the checkpoint at {trainer.tokens:,} tokens per SAE, as asked")
        return run
    trainer.save(corpus)
    info.update(
        status="complete",
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        train_seconds=round(time.time() - started, 1),
        lm_batches=trainer.lm_batches,
    )
    run.write(info)
    run.checkpoint_path.unlink(missing_ok=True)
    log(f"saved {len(sites)} SAE(s) under {run.saes_dir}")
    return run


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
        **({"site_stats": previous["site_stats"]} if previous and "site_stats" in previous else {}),
    }


def _sae_metadata(cfg: TrainConfig, t: SiteTrainer, corpus: str) -> dict[str, Any]:
    """Training facts recorded in each SAE's cfg.json metadata."""
    return {
        "training_architecture": cfg.arch,
        "training_tokens": t.tokens,
        "activation_scale_folded": t.stats.scale,
        "outlier_norm_threshold": t.stats.outlier_threshold,
        "outlier_factor": cfg.outlier_factor,
        "median_norm": t.stats.median_norm,
        "corpus": corpus,
        "seed": cfg.seed,
        "excludes": "position 0 and special tokens (BOS/EOS/PAD, chat markers) of every context",
    }

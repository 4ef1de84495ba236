"""Evaluate the SAEs of a run folder on held-out text and write each SAE's metrics.json."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from tqdm.auto import tqdm

from ..io import read_json, write_json
from ..model.load import LoadedModel
from ..options import corpus_option, device_option, option
from ..parallel import Parallel
from ..runs.open_run import open_run_saes
from ..runs.run_folder import RunDir
from ..text.corpus import describe_source, iter_documents
from ..text.tokens import token_batches
from .metrics import evaluate_saes

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class EvalOptions:
    """The options of `sae-explorer eval`; what is left out comes from the run's own config."""

    tokens: int | None = option(None, "held-out tokens for reconstruction metrics, e.g. 64k (default: the run's)", count=True)
    ce_tokens: int | None = option(None, "held-out tokens for CE loss / KL, e.g. 16k; 0 skips them (default: the run's)",
                                   count=True)
    corpus: str | None = corpus_option("the run's own; another source's held-out split is used as well")
    device: str = device_option()


def evaluate_run(
    run_path: str,
    *,
    eval_tokens: int | None = None,
    ce_tokens: int | None = None,
    corpus: str | None = None,
    device: str | torch.device = "auto",
    loaded: LoadedModel | None = None,
    log: Callable[[str], None] | None = None,
    par: Parallel = Parallel(),
    mode: str = "data",
) -> dict[str, dict[str, Any]]:
    """Evaluate every SAE of `run_path` on the held-out split; write and return metrics per hook name.

    Defaults (tokens, corpus, context size) come from the run's own config; `corpus` may name
    another text source, whose eval split is then used. Under torchrun, `mode` data deals the
    batches across ranks and sums their counts (rank 0 writes); sites gives each rank its own SAEs
    (dealt as in training) to evaluate on every batch. Returns the metrics this rank wrote.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    by_site = par.distributed and mode == "sites"
    hook_names = par.mine(RunDir(run_path).require().get("sites", [])) if by_site else None
    opened = open_run_saes(run_path, loaded=loaded, device=device, log=log, hook_names=hook_names)
    run, cfg, loaded, saes = opened.run, opened.config, opened.loaded, opened.saes
    eval_tokens = eval_tokens or cfg.get("eval_tokens", 65_536)
    ce_tokens = cfg.get("ce_tokens", 16_384) if ce_tokens is None else ce_tokens
    corpus = corpus if corpus is not None else cfg.get("corpus")

    docs = iter_documents(corpus, "eval", eval_fraction=cfg.get("eval_fraction", 0.05), text_field=cfg.get("text_field"))
    batches = token_batches(docs, loaded.tokenizer, cfg.get("context_size", 128), cfg.get("lm_batch_size") or 8)
    log(
        f"evaluating {len(saes)} SAE(s) on held-out text of {describe_source(corpus)}: "
        f"{eval_tokens:,} tokens for reconstruction, {ce_tokens:,} for CE loss (1 + 2 x {len(saes)} LM passes)"
    )
    shard = par if par.distributed and not by_site else Parallel()
    with tqdm(total=max(eval_tokens, ce_tokens), unit="tok", unit_scale=True, desc="evaluating", file=sys.stderr,
              dynamic_ncols=True, disable=not par.main) as bar:
        results = evaluate_saes(loaded, saes, batches, eval_tokens=eval_tokens, ce_tokens=ce_tokens, progress=bar.update, par=shard)
    if not (par.main or by_site):
        return {}
    note = shortfall_note(next(iter(results.values())), describe_source(corpus)) if results else None
    if note:
        log(f"warning: {note}")

    out: dict[str, dict[str, Any]] = {}
    for site, metrics in results.items():
        sae = saes[site]
        record = {
            "hook_name": site.hook_name,
            "site": site.short,
            "architecture": sae.cfg.architecture,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "k": sae.cfg.k,
            "training_tokens": sae.cfg.metadata.get("training_tokens"),
            **metrics,
            "eval_note": note,
            "eval_corpus": describe_source(corpus),
            "eval_split": "eval",
            "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(run.sae_dir(site.hook_name) / METRICS_FILE, record)
        out[site.hook_name] = record
    return out


def shortfall_note(metrics: dict[str, Any], corpus: str) -> str | None:
    """Why the evaluation saw fewer held-out tokens than asked, or None when it saw them all."""
    short = [
        f"{metrics[f'{kind}_tokens_available']:,} of the {metrics[f'{kind}_tokens_requested']:,} {what} tokens asked for"
        for kind, what in (("eval", "reconstruction"), ("ce", "CE-loss"))
        if metrics.get(f"{kind}_tokens_available", 0) < metrics.get(f"{kind}_tokens_requested", 0)
    ]
    if not short:
        return None
    return (f"evaluated on {' and '.join(short)}: the held-out split of {corpus} has no more real tokens; "
            "pass --corpus with more held-out text for steadier metrics")


def read_metrics(run_path: str) -> dict[str, dict[str, Any]]:
    """The metrics.json of every SAE in a run that has one, by hook name."""
    run = RunDir(run_path)
    return {p.name: read_json(p / METRICS_FILE) for p in run.sae_dirs() if (p / METRICS_FILE).is_file()}


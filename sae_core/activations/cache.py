"""Activations on disk: harvest once, then train or benchmark on them many times without the LM.

A cache is a folder of safetensors shards (`shard-00000.safetensors`, one tensor per site, real tokens
only, in corpus order) and `cache.json` saying what they are: model, sites, corpus, split, context
size, token count and dtype. The folder is written under a temporary name and renamed when complete,
so a cache that exists is whole. Nothing is pickled. A transcoder site's tensor holds its training rows: the
MLP's input and output side by side, `(n, 2 · d_model)`.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import UserError
from ..model.load import LoadedModel
from ..model.sites import Site
from ..options import corpus_option, device_option, model_option, option
from ..text.tokens import TokenBatch
from .harvest import Chunk, harvest_chunks

INFO_FILE = "cache.json"



@dataclass(frozen=True)
class CacheOptions:
    """The options of `sae-explorer cache`: which activations, of which text, stored how."""

    sites: str = option(None, "sites to store, e.g. L15R,L15M (as for train)", required=True)
    tokens: int = option(None, "real tokens to store per site, e.g. 2M (float32: 4 x d_model bytes each)", count=True,
                         required=True)
    out: str = option(None, "the cache folder to create", required=True)
    model: str | None = model_option()
    corpus: str | None = corpus_option()
    text_field: str | None = option(None, "column/key holding the text in .jsonl/.parquet/HF sources (default: text or messages)")
    split: str = option("train", "which split of the corpus", choices=("train", "eval", "all"))
    eval_fraction: float = option(0.05, "fraction of documents held out as eval (sources without a split field)")
    context_size: int = option(128, "tokens per packed context")
    lm_batch_size: int = option(8, "contexts per forward pass")
    shard_tokens: int = option(65_536, "tokens per shard; training shuffles within one", count=True)
    dtype: str = option("float32", "stored precision; training reads it back as float32",
                        choices=("float32", "float16", "bfloat16"))
    device: str = device_option()


def shard_path(folder: str | Path, index: int) -> Path:
    """Where shard `index` of a cache lives."""
    return Path(folder) / f"shard-{index:05d}.safetensors"


def write_cache(
    loaded: LoadedModel,
    sites: list[Site],
    batches: Iterable[TokenBatch],
    tokens: int,
    folder: str | Path,
    *,
    description: dict[str, Any] | None = None,
    shard_tokens: int = 65_536,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Harvest `tokens` real-token activations of every site from `batches` into a new cache at `folder`.

    `description` (corpus, split, context size, …) goes into cache.json beside what this function knows.
    Raises if `folder` exists; fewer tokens are written if the batches run out (cache.json says how many).
    """
    folder = Path(folder)
    if folder.exists():
        raise UserError(f"activation cache {folder} already exists; delete it to harvest again")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    written, shards, shard_lm_batches = 0, 0, []
    with tqdm(total=tokens, unit="tok", unit_scale=True, desc="caching activations", file=sys.stderr, dynamic_ncols=True) as bar:
        for chunk in harvest_chunks(loaded, sites, batches, shard_tokens):
            take = min(chunk.tokens, tokens - written)
            save_file(
                {site.hook_name: chunk.acts[site][:take].to(dtype).contiguous().cpu() for site in sites},
                str(shard_path(tmp, shards)),
            )
            written, shards = written + take, shards + 1
            shard_lm_batches.append(chunk.lm_batches)
            bar.update(take)
            if written >= tokens:
                break
    info = {
        "model": loaded.name,
        "d_model": loaded.layout.d_model,
        "sites": [s.hook_name for s in sites],
        "tokens": written,
        "shards": shards,
        "shard_lm_batches": shard_lm_batches,
        "dtype": str(dtype).removeprefix("torch."),
        **(description or {}),
    }
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    tmp.rename(folder)
    return folder


def read_info(folder: str | Path) -> dict[str, Any]:
    """cache.json of a cache folder, with a clear error if the folder is not a complete cache."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not an activation cache (no {INFO_FILE}); write one with write_cache")
    return json.loads(path.read_text())


def iter_cached(folder: str | Path, hook_name: str) -> Iterator[torch.Tensor]:
    """The cached activations of one site, shard by shard, as float32 `(n, d_model)` tensors (a transcoder's `2 · d_model`)."""
    info = read_info(folder)
    if hook_name not in info["sites"]:
        raise UserError(f"activation cache {folder} holds {', '.join(info['sites'])}, not {hook_name}")
    for i in range(info["shards"]):
        yield load_file(str(shard_path(folder, i)))[hook_name].float()


def check_cache(folder: str | Path, model: str, sites: list[Site]) -> dict[str, Any]:
    """cache.json, after checking the cache was harvested from `model` and holds every site in `sites`."""
    info = read_info(folder)
    if info["model"] != model:
        raise UserError(f"activation cache {folder} holds activations of {info['model']}, not {model}")
    missing = [s.hook_name for s in sites if s.hook_name not in info["sites"]]
    if missing:
        raise UserError(
            f"activation cache {folder} lacks {', '.join(missing)} (it holds {', '.join(info['sites'])}); "
            "write a cache with those sites (sae-explorer cache --sites …)"
        )
    return info


def cached_chunks(
    folder: str | Path, sites: list[Site], skip_lm_batches: int = 0, log: Callable[[str], None] | None = None
) -> Iterator[Chunk]:
    """The cache's shards as training chunks, over and over (with a notice each new pass), after skipping
    the first `skip_lm_batches` LM batches' worth of shards (to resume where a checkpoint left off)."""
    info = read_info(folder)
    done = 0
    for epoch in range(1 << 30):
        if epoch and log:
            log(f"the activation cache {folder} is exhausted; starting pass {epoch + 1} over it")
        for i, lm_batches in enumerate(info["shard_lm_batches"]):
            done += lm_batches
            if done <= skip_lm_batches:
                continue
            shard = load_file(str(shard_path(folder, i)))
            acts = {s: shard[s.hook_name].float() for s in sites}
            yield Chunk(acts, lm_batches, next(iter(acts.values())).shape[0])


def load_cached(folder: str | Path, hook_name: str) -> torch.Tensor:
    """All cached activations of one site as one float32 `(tokens, d_model)` tensor."""
    return torch.cat(list(iter_cached(folder, hook_name)))

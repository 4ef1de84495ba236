"""Harvest with the LM work dealt across ranks: the same chunks as `harvest.harvest_chunks`, in the same order.

Every rank walks the whole token stream (tokenizing is cheap) but runs the model only on its own
batches (batch j of a chunk on rank j % world). Chunk boundaries depend only on real-token counts,
which every rank knows, so they fall where one process puts them. At each boundary each site's rows
go to the rank(s) that train it and are put back in batch order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from ..activations.harvest import Chunk, batch_activations
from ..model.load import LoadedModel
from ..model.sites import Site
from ..text.tokens import TokenBatch
from .collectives import collect_rows
from .context import Parallel


def sharded_chunks(
    loaded: LoadedModel, sites: list[Site], owners: list[int | None], batches: Iterable[TokenBatch], chunk_tokens: int,
    par: Parallel,
) -> Iterator[Chunk]:
    """Chunks of at least `chunk_tokens` real tokens, holding the rows of the sites this rank trains.

    `owners[i]` is the rank that trains `sites[i]`, or None when every rank does (data parallel): those
    sites' rows stay where they were computed (`Chunk.batch_rows` says how they lie), and each rank
    fetches only the rows of its slices of the batches (`parallel.row_exchange`).
    """
    pending: list[tuple[int, dict[Site, Tensor] | None]] = []
    total = 0
    for batch in batches:
        n = int(batch.real.sum())
        rows = None
        if len(pending) % par.world == par.rank:
            acts = batch_activations(loaded, sites, batch)
            real = batch.real.to(next(iter(acts.values())).device)
            rows = {s: acts[s][real].float() for s in sites}
        pending.append((n, rows))
        total += n
        if total >= chunk_tokens:
            yield _exchange(loaded, sites, owners, pending, par)
            pending, total = [], 0
    if pending:
        yield _exchange(loaded, sites, owners, pending, par)


def _exchange(
    loaded: LoadedModel, sites: list[Site], owners: list[int | None], pending: list[tuple[int, dict[Site, Tensor] | None]],
    par: Parallel,
) -> Chunk:
    """Send every owned site's rows of the chunk's batches to its owner; return what this rank holds."""
    counts = [n for n, _ in pending]
    device = loaded.device
    acts: dict[Site, Tensor] = {}
    for site, dest in zip(sites, owners):
        mine = [rows[site] for _, rows in pending if rows is not None]
        width = loaded.layout.d_model * (2 if site.is_transcoder else 1)
        local = torch.cat(mine) if mine else torch.empty(0, width, device=device)
        if dest is None:
            acts[site] = local  # data parallel: exchanged batch by batch by the trainer
            continue
        gathered = gather_chunk(local, counts, dest, par)
        if gathered is not None:
            acts[site] = gathered
    return Chunk(acts, len(pending), sum(counts), counts if None in owners else None)


def gather_chunk(local: Tensor, batch_rows: list[int], dest: int | None, par: Parallel) -> Tensor | None:
    """The whole chunk in batch order on rank `dest` (None: every rank), from each rank's rows of its batches."""
    world = par.world
    per_rank = [batch_rows[q::world] for q in range(world)]
    parts = collect_rows(local, [sum(c) for c in per_rank], dest, par)
    if parts is None:
        return None
    pieces = [part.split(per_rank[q]) for q, part in enumerate(parts)]
    return torch.cat([pieces[j % world][j // world] for j in range(len(batch_rows))])

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

from ..harvest import Chunk, batch_activations
from ..models import LoadedModel
from ..sites import Site
from ..tokens import TokenBatch
from .collectives import collect_rows
from .context import Parallel


def sharded_chunks(
    loaded: LoadedModel, sites: list[Site], owners: list[int | None], batches: Iterable[TokenBatch], chunk_tokens: int,
    par: Parallel,
) -> Iterator[Chunk]:
    """Chunks of at least `chunk_tokens` real tokens, holding the rows of the sites this rank trains.

    `owners[i]` is the rank that trains `sites[i]`, or None when every rank does (data parallel).
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
    """Send every site's rows of the chunk's batches to its owner(s); return what this rank receives, in batch order."""
    counts = [n for n, _ in pending]
    world = par.world
    per_rank = [counts[q::world] for q in range(world)]
    sizes = [sum(c) for c in per_rank]
    device = next(loaded.model.parameters()).device
    acts: dict[Site, Tensor] = {}
    for site, dest in zip(sites, owners):
        mine = [rows[site] for _, rows in pending if rows is not None]
        local = torch.cat(mine) if mine else torch.empty(0, loaded.layout.d_model, device=device)
        parts = collect_rows(local, sizes, dest, par)
        if parts is None:
            continue
        pieces = [part.split(per_rank[q]) for q, part in enumerate(parts)]
        acts[site] = torch.cat([pieces[j % world][j // world] for j in range(len(pending))])
    return Chunk(acts, len(pending), sum(counts))

"""Data parallel without broadcasting chunks: each rank fetches exactly the rows of its slices of the steps.

One process appends a chunk's kept rows, shuffled, to the rows left over from the last chunk, and
steps through the result a batch at a time. Here the chunk's rows stay on the ranks that computed
them; every rank works out the same shuffle, hence where each position of that sequence goes —
position p of a step to rank (p mod batch) // slice, the leftover tail to the rank whose slice of
the next step it opens — and one all_to_all moves each row once (1/world of an all-gather's bytes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .collectives import backend_device, collect_rows
from .context import Parallel


def _sources(batch_rows: list[int], world: int) -> tuple[Tensor, Tensor]:
    """For every row of the chunk in batch order: the rank holding it and its index among that rank's rows."""
    counts = torch.tensor(batch_rows, dtype=torch.long)
    rank = torch.repeat_interleave(torch.arange(len(batch_rows)), counts) % world
    index = torch.empty_like(rank)
    for q in range(world):
        held = rank == q
        index[held] = torch.arange(int(held.sum()))
    return rank, index


def carry_sizes(carry_total: int, slice_rows: int, world: int) -> list[int]:
    """Rows of a `carry_total`-row leftover each rank holds (rank q: positions [q·slice, (q+1)·slice))."""
    return [max(0, min(slice_rows, carry_total - q * slice_rows)) for q in range(world)]


def exchange_rows(
    local: Tensor, keep: Tensor, batch_rows: list[int], carry_total: int, generator: torch.Generator,
    batch_size: int, max_steps: int, par: Parallel,
) -> tuple[Tensor, int, int]:
    """This rank's rows for the chunk's steps, in step order: `(rows, n_steps, tail)`.

    local: this rank's raw rows of the chunk (its batches, in order); keep: their outlier mask. The
    shuffle draws from `generator` exactly as one process does. `rows` holds, for each of the `n_steps`
    steps, this rank's `batch_size / world` rows, then its part of the `tail` rows left for the next
    chunk — all after the positions the rank already holds from the last chunk's tail.
    """
    world, rank, b = par.world, par.rank, batch_size // par.world
    src_rank, src_index = _sources(batch_rows, world)
    sizes = [int((src_rank == q).sum()) for q in range(world)]
    masks = collect_rows(keep.to(torch.uint8)[:, None], sizes, None, par)
    kept_mask = torch.empty(len(src_rank), dtype=torch.bool)
    for q, mask in enumerate(masks):  # type: ignore[arg-type]
        kept_mask[src_rank == q] = mask[:, 0].bool().cpu()
    kept = kept_mask.nonzero().squeeze(1)
    order = kept[torch.randperm(kept.numel(), generator=generator)]
    total = carry_total + order.numel()
    n_steps = min(total // batch_size, max_steps)
    used = n_steps * batch_size
    tail = total - used if n_steps < max_steps else 0
    position = torch.arange(carry_total, used + tail)
    rows = order[: position.numel()]
    dest = torch.where(position < used, (position % batch_size) // b, (position - used) // b)
    source = src_rank[rows]

    sent = (source == rank).nonzero().squeeze(1)
    sent = sent[torch.argsort(dest[sent], stable=True)]  # by destination, then position
    wanted = (dest == rank).nonzero().squeeze(1)  # in position order
    by_source = torch.argsort(source[wanted], stable=True)
    device = backend_device(local)
    send = local[src_index[rows[sent]].to(local.device)].to(device)
    received = local.new_empty((wanted.numel(), local.shape[1]), device=device)
    dist.all_to_all_single(
        received, send,
        torch.bincount(source[wanted], minlength=world).tolist(), torch.bincount(dest[sent], minlength=world).tolist(),
    )
    out = torch.empty_like(received)
    out[by_source.to(device)] = received
    return out.to(local.device), n_steps, tail

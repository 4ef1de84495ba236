"""The collective operations the trainers use, each a no-op or a plain copy in a single process.

NCCL only moves CUDA tensors and gloo only CPU ones: each collective moves a tensor to where the
process group wants it and the result back where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..saes.base import BatchScope
from .context import Parallel


def backend_device(t: Tensor) -> torch.device:
    """Where the process group moves tensors: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(t: Tensor, op: str = "sum") -> Tensor:
    """Reduce `t` over all ranks in place (sum, max or min); returns it. A no-op without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    device = backend_device(t)
    if t.device == device:
        dist.all_reduce(t, op=reduce_op)
        return t
    moved = t.to(device)
    dist.all_reduce(moved, op=reduce_op)
    return t.copy_(moved)


def broadcast_params(module: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s parameters and buffers (as DDP does at start)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in [*module.parameters(), *module.buffers()]:
        device = backend_device(t)
        moved = t.data.to(device)
        dist.broadcast(moved, src)
        t.data.copy_(moved)


def collect_rows(local: Tensor, sizes: list[int], dest: int | None, par: Parallel) -> list[Tensor] | None:
    """Send this rank's `local (sizes[rank], d)` rows to rank `dest` (None: to every rank).

    Returns every rank's rows, in rank order, on the receiving rank(s), else None. Ranks pad to the
    largest size, since gather and all_gather move equal shapes.
    """
    if not par.distributed:
        return [local]
    device = backend_device(local)
    width = max(sizes)
    padded = local.new_zeros((width, *local.shape[1:]), device=device)
    padded[: local.shape[0]] = local.to(device)
    receiving = dest is None or dest == par.rank
    parts = [torch.empty_like(padded) for _ in range(par.world)] if receiving else None
    if dest is None:
        dist.all_gather(parts, padded)  # type: ignore[arg-type]
    else:
        dist.gather(padded, parts, dst=dest)
    if parts is None:
        return None
    return [p[:n].to(local.device) for p, n in zip(parts, sizes)]


class RankBatch(BatchScope):
    """One rank's slice of every optimiser batch in data-parallel training: each reduction spans the ranks.

    Rank r takes rows [r·b, (r+1)·b) of each batch of b·world rows, so the ranks together see
    exactly the batch one process would, and their summed gradients are its gradient.
    """

    def __init__(self, par: Parallel):
        self.par = par
        self.world = par.world

    def shard(self, x: Tensor) -> Tensor:
        b = x.shape[0] // self.world
        return x[self.par.rank * b : (self.par.rank + 1) * b]

    def rows(self, n: int) -> int:
        return n * self.world

    def sum(self, t: Tensor) -> Tensor:
        return all_reduce_(t.detach().clone())

    def mean_rows(self, x: Tensor) -> Tensor:
        return self.sum(x.sum(0)) / self.rows(x.shape[0])

    def min(self, t: Tensor) -> Tensor:
        return all_reduce_(t.detach().clone(), "min")

    def any(self, mask: Tensor) -> Tensor:
        return all_reduce_(mask.to(torch.uint8), "max").bool()

    def kth_largest(self, values: Tensor, k: int) -> Tensor | None:
        sizes = torch.tensor([values.numel()], device=values.device)
        all_reduce_(sizes, "max")
        padded = values.new_full((int(sizes),), float("-inf"))
        padded[: values.numel()] = values
        everything = collect_rows(padded[:, None], [int(sizes)] * self.world, None, self.par)
        merged = torch.cat(everything).squeeze(1)  # type: ignore[arg-type]
        return merged.topk(min(k, merged.numel()), sorted=False).values.min()

    def reduce_grads(self, params: Iterable[Tensor]) -> None:
        for p in params:
            if p.grad is not None:
                all_reduce_(p.grad)

"""Which rank of a `torchrun` job this process is, and which device and backend it uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from ..devices import resolve_device
from ..errors import UserError

PARALLEL_MODES = ("data", "sites")
"""data: every rank trains every SAE on its slice of each batch; sites: each rank trains its own subset of the SAEs."""

T = TypeVar("T")


@dataclass(frozen=True)
class Parallel:
    """This process's place in the job; the default is a job of one process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0, which writes what is written once (run.json, the DuckDB file, logs of shared SAEs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mine(self, items: list[T]) -> list[T]:
        """This rank's share of `items`, dealt round-robin (item i goes to rank i % world)."""
        return items[self.rank :: self.world]


def init_parallel(device_name: str = "auto") -> tuple[Parallel, torch.device]:
    """Join the `torchrun` job this process was launched in (or none); return its place and device.

    Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK. CUDA ranks use NCCL on `cuda:LOCAL_RANK`; CPU
    ranks use gloo. Without WORLD_SIZE > 1 this is a single process and nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return Parallel(), device
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise UserError("WORLD_SIZE is set but RANK / MASTER_ADDR are not: launch distributed jobs with torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                "lower --nproc_per_node to the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return Parallel(dist.get_rank(), dist.get_world_size(), local_rank), device


def finish_parallel() -> None:
    """Leave the `torchrun` job together: every rank waits for the others, then tears its process group down.

    A rank that exits while another still talks to it (rank 0 hosts the job's store) can abort the
    other in gloo's teardown ("terminate called without an active exception").
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def site_owners(n_sites: int, par: Parallel, mode: str) -> list[int | None]:
    """Per site, the rank that trains it (site parallel, round-robin) or None (every rank: data parallel)."""
    if mode not in PARALLEL_MODES:
        raise UserError(f"unknown --parallel {mode!r}; use data or sites")
    if mode == "data" or not par.distributed:
        return [None] * n_sites
    if n_sites < par.world:
        raise UserError(
            f"--parallel sites needs at least one site per rank ({n_sites} sites, {par.world} ranks); "
            "use --parallel data or fewer ranks"
        )
    return [i % par.world for i in range(n_sites)]

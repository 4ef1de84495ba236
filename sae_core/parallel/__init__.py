"""Many processes, one job: `torchrun` ranks sharing the token stream (data parallel) or the sites (site parallel).

A plain process is a world of one, and every code path here reduces to the single-process one.
"""

from .collectives import RankBatch, all_reduce_, broadcast_params, collect_rows
from .context import PARALLEL_MODES, Parallel, finish_parallel, init_parallel, site_owners

__all__ = [
    "PARALLEL_MODES", "Parallel", "RankBatch", "all_reduce_", "broadcast_params", "collect_rows", "finish_parallel",
    "init_parallel", "site_owners",
]

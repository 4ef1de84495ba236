"""GPU memory: the LM's precision and how many contexts to run per forward pass.

On CPU the configured batch size is used as is. On a GPU, `auto` measures the peak memory of
a one-context forward pass to the deepest site and fits as many contexts as half of the free
memory allows (the other half is left to the SAEs and their optimiser state).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .hooks import run_to_sites
from .load import LoadedModel
from .sites import Site

LM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""--lm-dtype: the precision the LM's weights are loaded in (activations reach the SAEs as float32)."""



def dtype_named(name: str, flag: str) -> torch.dtype:
    """The torch dtype an option such as `--lm-dtype` names (float32, bfloat16, float16), or a clear error."""
    if name not in LM_DTYPES:
        raise UserError(f"unknown {flag} {name!r}; use {', '.join(LM_DTYPES)}")
    return LM_DTYPES[name]


AUTO_FRACTION = 0.5
MAX_AUTO_BATCH = 512


def contexts_that_fit(free_bytes: int, per_context_bytes: int, fraction: float = AUTO_FRACTION, cap: int = MAX_AUTO_BATCH) -> int:
    """How many contexts fit in `fraction` of `free_bytes` at `per_context_bytes` each (1 to `cap`)."""
    if per_context_bytes <= 0:
        return cap
    return max(1, min(cap, int(free_bytes * fraction) // per_context_bytes))


@torch.no_grad()
def resolve_lm_batch_size(requested: int, loaded: LoadedModel, sites: list[Site], context_size: int) -> int:
    """`requested` contexts per forward pass, or (0 = auto) as many as fit in GPU memory (8 on CPU)."""
    if requested < 0:
        raise UserError(f"--lm-batch-size must be a positive number of contexts or auto, got {requested}")
    if requested:
        return requested
    device = loaded.device
    if device.type != "cuda":
        return 8
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    ids = torch.ones(1, context_size, dtype=torch.long, device=device)
    run_to_sites(loaded.model, ids, torch.ones_like(ids), sites=sites, layout=loaded.layout)
    per_context = torch.cuda.max_memory_allocated(device) - base
    free, _ = torch.cuda.mem_get_info(device)
    return contexts_that_fit(free, per_context)

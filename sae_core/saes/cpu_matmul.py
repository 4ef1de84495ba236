"""The fused encoder's pre-activation blocks on CPU, through whichever BLAS multiplies faster on this machine.

PyTorch's x86 wheels multiply with a statically linked MKL, numpy's with OpenBLAS. On AMD CPUs MKL's float32
GEMM is the slower of the two on wide encoders (a 64x training step 12-18% faster through OpenBLAS on this
project's AMD EPYC, benchmarks/README.md), so there wide blocks go through numpy: the rows split over
`torch.get_num_threads()` Python threads (numpy releases the GIL), OpenBLAS held to one thread in each
(threadpoolctl), so that no two thread pools compete for the cores. The choice is fixed per machine (CPU vendor
and BLAS libraries), never timed, so a run is reproducible there; `SAE_EXPLORER_MATMUL=torch` or `=numpy`
overrides it. The two differ only in float32 rounding.
"""

from __future__ import annotations

import functools
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

ENV = "SAE_EXPLORER_MATMUL"
CHOICES = ("auto", "torch", "numpy")
MIN_BLOCK_ELEMENTS = 1 << 25
"""Smaller blocks stay with PyTorch: numpy gained 7-15% a step on 1,024 x 36,864 blocks here, 2% on 1,024 x 18,432,
nothing at 1,024 x 9,216 and lost 8-22% on 4x SAEs (2,304 latents) at any batch (benchmarks/README.md)."""


def cpu_vendor() -> str:
    """The CPU's vendor string ("AuthenticAMD", "GenuineIntel", ...; "" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() if platform.system() != "Darwin" else ""


@functools.cache
def _openblas() -> Any | None:
    """threadpoolctl's handle on numpy's OpenBLAS (None if numpy multiplies with another library)."""
    from threadpoolctl import ThreadpoolController

    np.ones((2, 2)) @ np.ones((2, 2))  # make sure numpy's BLAS is loaded
    controller = ThreadpoolController().select(internal_api="openblas")
    return controller if controller.lib_controllers else None


@functools.cache
def numpy_backend() -> bool:
    """Whether float32 encoder blocks on CPU go through numpy: `SAE_EXPLORER_MATMUL`, or by default on an AMD CPU
    where PyTorch multiplies with MKL and numpy with OpenBLAS."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise UserError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(CHOICES)}; unset it to let the machine decide")
    if choice != "auto":
        return choice == "numpy"
    return cpu_vendor() == "AuthenticAMD" and torch.backends.mkl.is_available() and _openblas() is not None


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _threads() -> tuple[int, ThreadPoolExecutor]:
    """`(n, a pool of n threads)`, n = PyTorch's thread count (made anew when that changes)."""
    global _pool
    n = max(1, torch.get_num_threads())
    if _pool is None or _pool[0] != n:
        _pool = (n, ThreadPoolExecutor(n, thread_name_prefix="sae-matmul"))
    return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads: it makes its own


os.register_at_fork(after_in_child=_forget_pool)


def encoder_block(b: Tensor | None, x: Tensor, W: Tensor, out: Tensor) -> Tensor:
    """`out = b + x @ W` (`x @ W` when b is None) for one block of rows: PyTorch's BLAS, or numpy's where
    `numpy_backend()` says so and the block has at least `MIN_BLOCK_ELEMENTS` entries.

    Only float32 CPU tensors take the numpy path; `out` must be contiguous.
    """
    if not (numpy_backend() and out.numel() >= MIN_BLOCK_ELEMENTS and out.device.type == "cpu"
            and x.dtype == W.dtype == out.dtype == torch.float32 and out.is_contiguous()):
        return torch.mm(x, W, out=out) if b is None else torch.addmm(b, x, W, out=out)
    xs, ws, outs = x.detach().numpy(), W.detach().numpy(), out.numpy()
    threads, pool = _threads()
    n = xs.shape[0]
    step = -(-n // threads)
    parts = [slice(start, min(n, start + step)) for start in range(0, n, step)]
    blas = _openblas()
    if blas is None:  # a BLAS we cannot hold to one thread: let it thread itself over the whole block
        np.matmul(xs, ws, out=outs)
    else:
        with blas.limit(limits=1):  # one BLAS thread in each part: no second thread pool competing for the cores
            for _ in pool.map(lambda rows: np.matmul(xs[rows], ws, out=outs[rows]), parts):
                pass
    return out if b is None else out.add_(b)

"""Is a native top-k worth it? PyTorch's `torch.topk`, our grouped top-k and a hand-written C++ kernel, side by side.

The C++ kernel (`topk_native.cpp`: two passes over each row, AVX2 where the CPU has it, loaded with ctypes and run
on `--threads` Python threads, which ctypes lets run at once) is compiled here with the system's g++; without one
its rows are left out. Each variant selects the top k of 1,024-row blocks of pre-activations, first on a block
already computed ("alone"), then over a 4,096-row batch with each block selected right after the `addmm` that
wrote it, as in a training step ("in a step": only the selections are timed). The machine's read bandwidth (a `sum`
over 151 MB) is printed for scale.

    python benchmarks/topk_kernels.py --expansions 16,64
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from sae_core.saes.sparse_ops import topk_rows

SOURCE = Path(__file__).with_name("topk_native.cpp")


def compile_native() -> Callable[..., int] | None:
    """The C++ kernel as a ctypes function, or None without a g++."""
    compiler = shutil.which("g++")
    if compiler is None:
        return None
    lib = Path(tempfile.mkdtemp()) / "topk_native.so"
    subprocess.run([compiler, "-O3", "-march=native", "-shared", "-fPIC", "-o", str(lib), str(SOURCE)], check=True)
    fn = ctypes.CDLL(str(lib)).sae_topk_rows
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 4, *[ctypes.c_void_p] * 3]
    return fn


class NativeTopK:
    """Runs the kernel on row ranges of a block, one per thread."""

    def __init__(self, fn: Callable[..., int], threads: int):
        self.fn, self.threads = fn, threads
        self.pool = ThreadPoolExecutor(threads)

    def __call__(self, pre: Tensor, k: int, values: Tensor, indices: Tensor) -> None:
        n, d = pre.shape
        nan = torch.empty(n, dtype=torch.uint8)
        step = -(-n // self.threads)
        ranges = [(r, min(n, r + step)) for r in range(0, n, step)]
        args = (pre.data_ptr(), d, k, values.data_ptr(), indices.data_ptr(), nan.data_ptr())
        bad = sum(self.pool.map(lambda r: self.fn(args[0], r[0], r[1], *args[1:]), ranges))
        if bad:
            raise ValueError("NaN in the pre-activations")


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each function, called in alternation `repeats` times (after one warm-up call each)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def measure(d_sae: int, k: int, native: NativeTopK | None, repeats: int, d_in: int = 576, n: int = 4096,
            rows: int = 1024) -> dict[str, tuple[float, float]]:
    """Variant -> (ms for one block alone, ms of the selections over a batch, each block fresh from its addmm)."""
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(d_sae, d_in, generator=g) / d_in**0.5).T  # laid out as the training SAEs keep W_enc
    b = 0.1 * torch.randn(d_sae, generator=g)
    x = torch.randn(n, d_in, generator=g)
    block = torch.empty(rows, d_sae)
    values, indices = torch.empty(n, k), torch.empty(n, k, dtype=torch.long)
    selectors: dict[str, Callable[[Tensor, slice], object]] = {
        "torch.topk": lambda pre, _: pre.topk(k, dim=1, sorted=False),
        "grouped (shipped)": lambda pre, _: topk_rows(pre, k),
    }
    if native:
        selectors["native C++"] = lambda pre, s: native(pre, k, values[s], indices[s])
        torch.addmm(b, x[:rows], W, out=block)
        native(block, k, values[:rows], indices[:rows])
        expected = block.topk(k, dim=1).values.sort(1).values
        assert torch.equal(values[:rows].sort(1).values, expected), "the native kernel disagrees with torch.topk"
        assert torch.equal(block.gather(1, indices[:rows]), values[:rows])

    def in_step(select: Callable[[Tensor, slice], object]) -> float:
        spent = 0.0
        for start in range(0, n, rows):
            pre = torch.addmm(b, x[start : start + rows], W, out=block)
            began = time.perf_counter()
            select(pre, slice(start, start + rows))
            spent += time.perf_counter() - began
        return 1e3 * spent

    torch.addmm(b, x[:rows], W, out=block)
    alone = median_ms({name: (lambda s=s: s(block, slice(0, rows))) for name, s in selectors.items()}, repeats)
    after: dict[str, list[float]] = {name: [] for name in selectors}
    for _ in range(repeats):
        for name, select in selectors.items():
            after[name].append(in_step(select))
    return {name: (alone[name], statistics.median(after[name])) for name in selectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expansions", default="16,64")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fn = compile_native()
    native = NativeTopK(fn, args.threads) if fn else None
    big = torch.randn(2**22 * 9)
    read = median_ms({"sum": lambda: big.sum()}, args.repeats)["sum"]
    print(f"torch {torch.__version__}, {args.threads} threads; read bandwidth {big.numel() * 4 / read / 1e6:.1f} GB/s"
          + ("" if native else "; no g++: the native kernel is left out"))
    for expansion in (int(e) for e in args.expansions.split(",")):
        d_sae = expansion * 576
        results = measure(d_sae, args.k, native, args.repeats)
        print(f"\n{expansion}× (d_sae {d_sae:,}), k {args.k}: milliseconds (medians of {args.repeats})")
        print(f"{'':<20}{'1,024 rows, alone':>19}{'4,096 rows, in a step':>23}")
        for name, (alone, in_step) in results.items():
            print(f"{name:<20}{alone:>19.1f}{in_step:>23.1f}")


if __name__ == "__main__":
    main()

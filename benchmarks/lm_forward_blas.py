"""Would the model's forward passes run faster through numpy's BLAS? Each Linear of the LM through PyTorch's
`torch.mm` (MKL in PyTorch's x86 wheels) and through `cpu_matmul.encoder_block`'s numpy path (OpenBLAS, rows split
over PyTorch's thread count, one BLAS thread each: the path that speeds up wide SAE encoders on AMD CPUs).

Two views, both in one process: each distinct Linear shape of the model multiplied alone (medians of 15), then the
forward to `--site` with every Linear on one backend or the other, the two alternating over `--rounds` (median
tokens/s). The forward passes are three quarters of `make demo`'s training (pipeline_throughput.py).

    python benchmarks/lm_forward_blas.py                       # the embedded SmolLM2-135M, to L24R
    python benchmarks/lm_forward_blas.py --batches 16,48 --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator

import torch
from common import random_batch, tiny_or_embedded

from sae_core.model.hooks import run_to_sites
from sae_core.saes import cpu_matmul


def numpy_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` with the product through `encoder_block` (numpy's path is forced in this process)."""
    rows = x.reshape(-1, x.shape[-1])
    out = rows.new_empty(rows.shape[0], module.out_features)
    return cpu_matmul.encoder_block(module.bias, rows, module.weight.T, out).view(*x.shape[:-1], -1)


@contextlib.contextmanager
def linears_through_numpy(model: torch.nn.Module) -> Iterator[None]:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        m.forward = numpy_linear.__get__(m)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in linears:
            del m.forward


def median_ms(fn, n: int = 15) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def gemm_gflops(m: int, out_f: int, in_f: int) -> tuple[float, float]:
    """GFLOP/s of one `(m, in) @ (in, out)` product through PyTorch and through numpy (the weight stored as a Linear's)."""
    W, x, out = torch.randn(out_f, in_f), torch.randn(m, in_f), torch.empty(m, out_f)
    flop = 2 * m * out_f * in_f / 1e6  # per ms → GFLOP/s
    return (flop / median_ms(lambda: torch.mm(x, W.T, out=out)),
            flop / median_ms(lambda: cpu_matmul.encoder_block(None, x, W.T, out)))


def forward_speed(model: torch.nn.Module, batch, site: str, rounds: int) -> tuple[dict[str, list[float]], float]:
    """Tokens/s of the forward to `site` per backend and round (alternating), and the largest relative difference."""
    def forward():
        return run_to_sites(model, batch.input_ids, batch.attention_mask, [site])

    reference = forward()
    with linears_through_numpy(model):
        numpy_acts = forward()
    diff = max(float((reference[s] - numpy_acts[s]).abs().max() / reference[s].abs().max()) for s in reference)
    speed: dict[str, list[float]] = {"torch": [], "numpy": []}
    for _ in range(rounds):
        for name in speed:
            with linears_through_numpy(model) if name == "numpy" else contextlib.nullcontext():
                start = time.perf_counter()
                forward()
                speed[name].append(batch.input_ids.numel() / (time.perf_counter() - start))
    return speed, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2; 'tiny' for a smoke test)")
    parser.add_argument("--site", default="L24R", help="run the forward as far as this site")
    parser.add_argument("--batches", default="16,48", help="contexts per forward, comma-separated")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ[cpu_matmul.ENV] = "numpy"
    cpu_matmul.MIN_BLOCK_ELEMENTS = 0
    cpu_matmul.numpy_backend.cache_clear()
    loaded = tiny_or_embedded(args.model)
    model = loaded.model
    head = model.get_output_embeddings()  # not run by a forward that stops at a site
    shapes = sorted({(m.out_features, m.in_features) for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head})
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu_matmul.cpu_vendor() or 'unknown CPU'}, "
          f"numpy's BLAS: {'OpenBLAS' if cpu_matmul._openblas() is not None else 'other'}")
    for n_contexts in (int(b) for b in args.batches.split(",")):
        m = n_contexts * args.context
        print(f"\n{n_contexts} contexts of {args.context} tokens ({m:,} rows)")
        print(f"{'Linear (out × in)':<20}{'torch GFLOP/s':>15}{'numpy GFLOP/s':>15}{'numpy ÷ torch':>15}")
        for out_f, in_f in shapes:
            t, n = gemm_gflops(m, out_f, in_f)
            print(f"{f'{out_f} × {in_f}':<20}{t:>15.0f}{n:>15.0f}{n / t:>15.2f}")
        batch = random_batch(loaded.tokenizer, n_contexts, args.context, seed=0)
        speed, diff = forward_speed(model, batch, args.site, args.rounds)
        t, n = (statistics.median(speed[k]) for k in ("torch", "numpy"))
        print(f"forward to {args.site}: torch {t:,.0f} tokens/s, numpy {n:,.0f} tokens/s, numpy ÷ torch {n / t:.2f} "
              f"(rounds: {', '.join(f'{b / a:.2f}' for a, b in zip(speed['torch'], speed['numpy']))}); "
              f"largest difference {diff:.1e} of the largest activation")

if __name__ == "__main__":
    main()

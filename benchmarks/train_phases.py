"""Where a training step of our TopK trainer spends its time, phase by phase, beside the encoder matmul alone.

Profiles `SiteTrainer.step` (torch.profiler, self CPU time of each op) and sums the ops into phases: the encoder
matmul, top-k selection, the sparse gradients and decoder, the optimiser, and the trainer's bookkeeping (the
rest). Variants of the step run side by side in one process, steps alternating, so machine noise hits all alike:
`grouped` is the current step (grouped top-k, `sparse_ops.topk_rows`), `plain-topk` the same with `torch.topk`
over every column (the step before issue 21).

    python benchmarks/train_phases.py --expansions 16,64
    python benchmarks/train_phases.py --expansions 64 --data lowrank --steps 6
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import defaultdict

import torch
from peer_trainers import MatmulAlone, Ours
from torch.profiler import ProfilerActivity, profile
from train_vs_peers import SYNTHETIC, normalise

from sae_core.saes import sparse_ops

PHASES = {
    "encoder matmul": ("aten::addmm", "aten::mm"),
    "top-k": ("aten::topk", "aten::amax", "aten::gather", "aten::max"),
    "sparse grads + decoder": ("aten::embedding_bag", "aten::_embedding_bag", "aten::_embedding_bag_forward_only",
                               "aten::_embedding_bag_per_sample_weights_backward", "aten::_embedding_bag_backward",
                               "aten::sort", "aten::argsort", "aten::bincount", "aten::index_add_", "aten::cumsum",
                               "aten::bmm", "aten::repeat_interleave"),
    "optimiser": ("aten::_fused_adam_", "Optimizer.zero_grad#Adam.zero_grad", "aten::_foreach_", "aten::addcmul_"),
}
"""Which ops make up each phase (by name prefix); every other op is the trainer's bookkeeping."""
VARIANTS = {"grouped": None, "plain-topk": 1 << 62}
"""Variant → `sparse_ops.MIN_GROUPED_WIDTH` (None: as shipped)."""


@contextlib.contextmanager
def variant(name: str):
    before = sparse_ops.MIN_GROUPED_WIDTH
    if VARIANTS[name] is not None:
        sparse_ops.MIN_GROUPED_WIDTH = VARIANTS[name]
    try:
        yield
    finally:
        sparse_ops.MIN_GROUPED_WIDTH = before


def phase_of(op: str) -> str:
    return next((phase for phase, ops in PHASES.items() if any(op.startswith(o) for o in ops)), "bookkeeping")


def profile_step(trainer: Ours, x: torch.Tensor) -> dict[str, float]:
    """Seconds of self CPU time per phase in one step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step(x)
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        out[phase_of(event.key)] += event.self_cpu_time_total / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expansions", default="16,64")
    parser.add_argument("--data", default="synthetic", choices=list(SYNTHETIC))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d_in = 576
    title, make = SYNTHETIC[args.data]
    n = (args.steps + 4) * args.batch
    x, _ = normalise(make(int(n * 1.05) + 4096, d_in, 0), torch.zeros(0, d_in))
    batches = [x[i * args.batch : (i + 1) * args.batch] for i in range(args.steps + 3)]
    print(f"torch {torch.__version__}, {args.threads} threads; {title}, batch {args.batch}, k {args.k}")
    for expansion in (int(e) for e in args.expansions.split(",")):
        d_sae = expansion * d_in
        trainers = {name: Ours(d_in, d_sae, args.k, 2e-4 / (d_sae / 2**14) ** 0.5, batches[0], args.steps + 3) for name in VARIANTS}
        matmul = MatmulAlone(d_in, d_sae, args.k, 0.0, batches[0], 0)
        times: dict[str, list[float]] = defaultdict(list)
        for i, batch in enumerate(batches[:-1]):
            for name, trainer in trainers.items():
                with variant(name):
                    start = time.perf_counter()
                    trainer.step(batch)
                    times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            matmul.step(batch)
            times["matmul alone"].append(time.perf_counter() - start)
            print(f"  {expansion}× step {i + 1}: " + "  ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), file=sys.stderr)
        median = {name: statistics.median(t[2:]) for name, t in times.items()}
        phases = {}
        for name, trainer in trainers.items():
            with variant(name):
                phases[name] = profile_step(trainer, batches[-1])
        print(f"\n{expansion}× (d_sae {d_sae:,}): median step over {args.steps} steps; phases from one profiled step "
              "(self CPU seconds; the profiler adds a little)")
        header = f"{'':<24}" + "".join(f"{name:>14}" for name in trainers) + f"{'matmul alone':>14}"
        print(header)
        print(f"{'step (s)':<24}" + "".join(f"{median[name]:>14.3f}" for name in trainers) + f"{median['matmul alone']:>14.3f}")
        print(f"{'tokens/s':<24}" + "".join(f"{args.batch / median[name]:>14,.0f}" for name in trainers)
              + f"{args.batch / median['matmul alone']:>14,.0f}")
        print(f"{'÷ matmul alone':<24}" + "".join(f"{median['matmul alone'] / median[name]:>14.2f}" for name in trainers))
        for phase in (*PHASES, "bookkeeping"):
            print(f"{phase:<24}" + "".join(f"{phases[name].get(phase, 0.0):>14.3f}" for name in trainers))


if __name__ == "__main__":
    main()

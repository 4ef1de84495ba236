"""Scaling of `sae-explorer train` from 1 to N processes (torchrun, gloo on CPU or NCCL on GPUs), side by side.

Each layout trains the same SAEs on the same tokens; the figure is training tokens per second summed
over the SAEs, from the `train_seconds` each run records (model loading excluded). The baseline is
one process with all the threads the ranks share, so the ratio is what adding processes buys on
this machine, not per-core efficiency: on 2 cores, 2 ranks of 1 thread compete for the same cores
as 1 rank of 2 threads.

    python benchmarks/distributed_scaling.py                      # embedded SmolLM2, 2 ranks, CPU
    python benchmarks/distributed_scaling.py --ranks 4 --device cuda --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args: argparse.Namespace, out: Path, ranks: int, threads: int, mode: str) -> float:
    """Train once; return SAE training tokens per second (all SAEs together)."""
    train = [
        "train", "--sites", args.sites, "--tokens", args.tokens, "--batch-size", str(args.batch_size), "--expansion",
        str(args.expansion), "--k", "32", "--chunk-tokens", args.chunk_tokens, "--context-size", "128", "--lm-batch-size", "8",
        "--checkpoint-every", "1B", "--no-eval", "--device", args.device, "--threads", str(threads), "--out", str(out),
        "--parallel", mode, "--overwrite",
    ] + (["--model", args.model] if args.model else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if ranks == 1:
        cmd = [sys.executable, "-m", "sae_core.cli", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m", "sae_core.cli", *train]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(done.stderr[-4000:])
    info = json.loads((out / "run.json").read_text())
    n_sites = len(info["sites"])
    tokens = info["config"]["tokens"]
    return n_sites * tokens / info["train_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--sites", default="L10R,L20R")
    p.add_argument("--tokens", default="48k")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--chunk-tokens", default="16k")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the one-process baseline, shared out among the ranks")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    per_rank = max(1, args.threads // args.ranks)
    with tempfile.TemporaryDirectory() as tmp:
        layouts = [
            (f"1 process x {args.threads} threads", 1, args.threads, "data"),
            (f"{args.ranks} ranks x {per_rank} threads, data parallel", args.ranks, per_rank, "data"),
            (f"{args.ranks} ranks x {per_rank} threads, site parallel", args.ranks, per_rank, "sites"),
        ]
        results = []
        for i, (name, ranks, threads, mode) in enumerate(layouts):
            results.append((name, run(args, Path(tmp) / f"run{i}", ranks, threads, mode)))
    base = results[0][1]
    print(f"sites {args.sites}, {args.tokens} tokens each, batch {args.batch_size}, {args.expansion}x, device {args.device}")
    print(f"{'layout':<45} {'SAE tok/s':>10} {'vs 1 process':>13}")
    for name, rate in results:
        print(f"{name:<45} {rate:>10,.0f} {rate / base:>12.2f}x")


if __name__ == "__main__":
    main()

"""Our SAE trainer against EleutherAI sparsify and SAELens, side by side on the same activations.

For each data set (synthetic sparse superpositions, and real activations of the embedded model's middle
residual layer, harvested once into an activation cache) and each width, every trainer gets the same
batches in the same order, with the same k, batch size, learning rate and seed. Steps alternate
between trainers (the order rotates every step), so machine noise hits all of them alike. It prints
tokens/s (median step after warm-up), our speed-up over each, eval FVU on held-out activations after
the same number of tokens, and the peak memory of a training step (each trainer alone, in a fresh
process). Peers need the optional extra: `pip install -e ".[bench]"` (`make test` installs them too).

    python benchmarks/train_vs_peers.py                                   # both data sets, 16x, 48 steps
    python benchmarks/train_vs_peers.py --expansions 64 --steps 24        # 64x
    python benchmarks/train_vs_peers.py --data synthetic --steps 6 --trainers ours,sparsify,matmul   # quick look
    python benchmarks/train_vs_peers.py --data all --expansions 16,64 --trainers ours,sparsify,matmul  # issue 21's table
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from peer_trainers import TRAINERS, Trainer, make_trainer

from sae_core.activations.harvest import SiteStats

CACHE = Path(__file__).parent / ".cache"


def synthetic_activations(n: int, d_in: int, seed: int, n_features: int | None = None, active: float = 24.0) -> torch.Tensor:
    """`(n, d_in)` sparse superpositions: each row sums about `active` of `n_features` unit directions.

    Feature frequencies follow a power law and magnitudes are exponential, plus 5% Gaussian noise,
    so an SAE has real structure to find (pure Gaussian noise would make every FVU ≈ 1).
    """
    g = torch.Generator().manual_seed(seed)
    n_features = n_features or 8 * d_in
    directions = torch.randn(n_features, d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    freq = (torch.arange(1, n_features + 1, dtype=torch.float) ** -0.7)[torch.randperm(n_features, generator=g)]
    freq = (freq * active / freq.sum()).clamp(max=1.0)
    rows = []
    for start in range(0, n, 8192):
        m = min(8192, n - start)
        coef = (torch.rand(m, n_features, generator=g) < freq) * torch.empty(m, n_features).exponential_(generator=g)
        x = coef @ directions
        rows.append(x + 0.05 * x.norm(dim=1, keepdim=True) / d_in**0.5 * torch.randn(m, d_in, generator=g))
    return torch.cat(rows)


def low_rank_activations(n: int, d_in: int, seed: int, rank: int = 64, noise: float = 0.3) -> torch.Tensor:
    """`(n, d_in)` dense low-rank data plus noise: Gaussian coordinates in a random `rank`-dimensional subspace, plus
    isotropic noise at `noise` of the signal's scale (no sparse structure: the shape an independent harness used)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g) / rank**0.5
    return torch.cat([torch.randn(m, rank, generator=g) @ basis + noise * torch.randn(m, d_in, generator=g)
                      for m in (min(8192, n - s) for s in range(0, n, 8192))])


def heavy_tailed_activations(n: int, d_in: int, seed: int) -> torch.Tensor:
    """Sparse superpositions whose row norms are heavy-tailed (log-normal, σ = 1: a few rows 10× the median, which
    the outlier filter then drops), like residual streams with their large-norm tokens."""
    g = torch.Generator().manual_seed(seed + 1)
    x = synthetic_activations(n, d_in, seed)
    return x * torch.empty(n, 1).log_normal_(0.0, 1.0, generator=g)


SYNTHETIC = {
    "synthetic": ("synthetic sparse superpositions", synthetic_activations),
    "lowrank": ("synthetic dense low-rank + noise", low_rank_activations),
    "heavytail": ("synthetic heavy-tailed norms", heavy_tailed_activations),
}
"""The synthetic data sets: name → (title, generator `(n, d_in, seed) -> (n, d_in)`)."""


def real_activations(n_train: int, n_eval: int, model: str | None, layer: int | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Residual-stream activations of the middle layer (train and held-out splits), from the cache or harvested into it."""
    from sae_core.activations.cache import load_cached, read_info, write_cache
    from sae_core.model.load import load_model
    from sae_core.model.sites import parse_sites
    from sae_core.text.corpus import iter_documents
    from sae_core.text.tokens import token_batches

    loaded = None
    out = []
    for split, n in (("train", n_train), ("eval", n_eval)):
        tag = (model or "smollm2-135m-instruct").replace("/", "_")
        folder = CACHE / f"{tag}-{'mid' if layer is None else layer}-R-{split}"
        if folder.exists() and read_info(folder)["tokens"] < n:
            print(f"{folder} holds fewer than {n:,} tokens; harvesting again", file=sys.stderr)
            import shutil

            shutil.rmtree(folder)
        if not folder.exists():
            loaded = loaded or load_model(model)
            site = parse_sites(f"L{layer if layer is not None else loaded.layout.n_layers // 2}R", loaded.layout.n_layers)
            docs = iter_documents(None, split)  # type: ignore[arg-type]
            batches = token_batches(docs, loaded.tokenizer, 128, 8)
            write_cache(loaded, site, batches, n, folder, description={"corpus": "embedded", "split": split, "context_size": 128})
        info = read_info(folder)
        x = load_cached(folder, info["sites"][0])
        if x.shape[0] < n:
            raise SystemExit(f"the {split} split gave only {x.shape[0]:,} tokens; ask for fewer --steps or --eval-tokens")
        out.append(x[:n])
    return out[0], out[1], f"{info['model']} {info['sites'][0]}"


def normalise(train: torch.Tensor, held_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop outlier tokens (> 10× median norm, as our trainer does) and scale both to mean norm sqrt(d_in)."""
    stats = SiteStats.estimate(train[:65_536], 10.0, True)
    train, held_out = train[stats.keep_mask(train)], held_out[stats.keep_mask(held_out)]
    return train * stats.scale, held_out * stats.scale


@torch.no_grad()
def eval_fvu(trainer: Trainer, x: torch.Tensor, batch: int) -> float:
    """Fraction of variance unexplained on held-out activations `x`."""
    err = sum(float((trainer.reconstruct(x[i : i + batch]) - x[i : i + batch]).pow(2).sum()) for i in range(0, len(x), batch))
    return err / float((x - x.mean(0)).pow(2).sum())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def race(names: list[str], train: torch.Tensor, held_out: torch.Tensor, args: argparse.Namespace, d_sae: int) -> dict[str, dict]:
    """Train every trainer on the same batches, steps alternating; tokens/s and held-out FVU per trainer."""
    device, b = train.device, args.batch
    lr = args.lr or 2e-4 / (d_sae / 2**14) ** 0.5
    trainers = [make_trainer(n, train.shape[1], d_sae, args.k, lr, train[:b], args.steps) for n in names]
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.steps):
        x = train[i * b : (i + 1) * b]
        for t in trainers[i % len(trainers) :] + trainers[: i % len(trainers)]:
            sync(device)
            start = time.perf_counter()
            t.step(x)
            sync(device)
            times[t.name].append(time.perf_counter() - start)
        print(f"  step {i + 1}/{args.steps}: " + "  ".join(f"{n} {times[n][-1]:.2f}s" for n in names), file=sys.stderr, flush=True)
    return {
        t.name: {
            "tokens_per_s": b / statistics.median(times[t.name][args.warmup :]),
            "step_s": statistics.median(times[t.name][args.warmup :]),
            "eval_fvu": float("nan") if t.name.startswith("matmul") else eval_fvu(t, held_out, b),
        }
        for t in trainers
    }


def probe_memory(name: str, d_in: int, d_sae: int, args: argparse.Namespace) -> tuple[float, float]:
    """Peak memory (MiB) of one trainer in a fresh process: of three training steps above what it held before them
    (step only), and the whole process's peak over setup and those steps (what an out-of-memory error meets)."""
    device = torch.device(args.device)
    x = torch.randn(args.batch, d_in, generator=torch.Generator().manual_seed(0)).to(device)
    trainer = make_trainer(name, d_in, d_sae, args.k, 1e-4, x, 3)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        whole_before = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _proc_status_bytes("VmRSS")
        whole_before = _proc_status_bytes("VmHWM")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set, to the current one
        except OSError:
            pass
    for _ in range(3):
        trainer.step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        # not ru_maxrss: Linux carries it over from the parent process across fork + exec
        peak = _proc_status_bytes("VmHWM")
    return (peak - before) / 2**20, max(peak, whole_before) / 2**20


def _proc_status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} in /proc/self/status: the CPU memory probe needs Linux (or pass --no-memory)")


def memory_of(name: str, d_in: int, d_sae: int, args: argparse.Namespace) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--probe-memory", name, "--probe-shape", f"{d_in},{d_sae}",
           "--batch", str(args.batch), "--k", str(args.k), "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
    if out.returncode:
        raise SystemExit(f"memory probe of {name} failed:\n{out.stderr[-2000:]}")
    step, whole = out.stdout.strip().splitlines()[-1].split()
    return float(step), float(whole)


def available(names: list[str]) -> list[str]:
    """The requested trainers whose library is installed (a notice for the others)."""
    keep = []
    for n in names:
        module = {"sparsify": "sparsify", "saelens": "sae_lens", "saelens-sparse": "sae_lens"}.get(n)
        try:
            if module:
                __import__(module)
            keep.append(n)
        except ImportError:
            print(f"skipping {n}: its library is not installed (pip install -e '.[bench]')", file=sys.stderr)
    return keep


def report(title: str, results: dict[str, dict], memory: dict[str, tuple[float, float]]) -> list[str]:
    ours = results["ours"]
    lines = [f"\n{title}", f"{'trainer':<16}{'tokens/s':>10}{'ours ÷ it':>11}{'eval FVU':>10}{'vs ours':>9}"
                            f"{'step MiB':>10}{'process MiB':>13}"]
    for name, r in results.items():
        mem = f"{memory[name][0]:>10.0f}{memory[name][1]:>13.0f}" if name in memory else f"{'':>23}"
        fvu = f"{'—':>10}{'':>9}" if name.startswith("matmul") else f"{r['eval_fvu']:>10.4f}{(r['eval_fvu'] / ours['eval_fvu'] - 1) * 100:>+8.1f}%"
        lines.append(f"{name:<16}{r['tokens_per_s']:>10,.0f}{ours['tokens_per_s'] / r['tokens_per_s']:>10.2f}×{fvu}{mem}")
    if "matmul" in results:
        lines.append(f"ours ÷ the encoder matmul alone: {ours['tokens_per_s'] / results['matmul']['tokens_per_s']:.2f} "
                     "(target ≥ 0.85)")
    if "matmul-ours" in results:
        lines.append(f"ours ÷ the same matmul in our step's BLAS: {ours['tokens_per_s'] / results['matmul-ours']['tokens_per_s']:.2f}")
    peers = {n: r for n, r in results.items() if n not in ("ours", "plain") and not n.startswith("matmul")}
    if peers:
        fastest = max(peers, key=lambda n: peers[n]["tokens_per_s"])
        speedup = ours["tokens_per_s"] / peers[fastest]["tokens_per_s"]
        fvu_gap = ours["eval_fvu"] / peers[fastest]["eval_fvu"] - 1
        lines.append(f"ours vs the fastest peer ({fastest}): {speedup:.2f}× the tokens/s (target ≥ 1.5× at 64×, ≥ 2× at "
                     f"16×), eval FVU {ours['eval_fvu']:.4f} vs {peers[fastest]['eval_fvu']:.4f} ({fvu_gap * 100:+.1f}%)")
        if memory and all(n in memory for n in peers):
            lowest = min(peers, key=lambda n: memory[n][1])
            lines.append(f"whole-process peak: ours {memory['ours'][1]:.0f} MiB, lowest peer {lowest} {memory[lowest][1]:.0f} MiB; "
                         f"step only: ours {memory['ours'][0]:.0f} MiB, {lowest} {memory[lowest][0]:.0f} MiB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic,real",
                        help=f"comma-separated, from {', '.join(SYNTHETIC)}, real, or all (default synthetic,real)")
    parser.add_argument("--expansions", default="16", help="comma-separated widths as multiples of d_in (default 16)")
    parser.add_argument("--steps", type=int, default=48, help="optimiser steps per trainer (all train on the same tokens)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--batch", type=int, default=4096, help="tokens per step")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate for all (default 2e-4 / sqrt(d_sae / 16384))")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated, from {', '.join(TRAINERS)}")
    parser.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens for the FVU")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="model for the real activations (default: the embedded SmolLM2)")
    parser.add_argument("--layer", type=int, default=None, help="residual layer for the real activations (default: the middle)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-trainer peak-memory probes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-shape", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.probe_memory:
        d_in, d_sae = map(int, args.probe_shape.split(","))
        print(*probe_memory(args.probe_memory, d_in, d_sae, args))
        return
    names = available([n.strip() for n in args.trainers.split(",")])
    if "ours" not in names:
        raise SystemExit("--trainers must include ours")
    device = torch.device(args.device)
    n_train = args.steps * args.batch
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}; batch {args.batch}, k {args.k}, "
          f"{args.steps} steps ({n_train:,} tokens) per trainer; trainers: {', '.join(names)}")
    wanted = [*SYNTHETIC, "real"] if args.data == "all" else [d.strip() for d in args.data.split(",")]
    unknown = [d for d in wanted if d not in SYNTHETIC and d != "real"]
    if unknown:
        raise SystemExit(f"--data: no data set {', '.join(unknown)}; choose from {', '.join(SYNTHETIC)}, real, all")
    datasets = []
    for name in (d for d in wanted if d in SYNTHETIC):
        title, make = SYNTHETIC[name]
        x = make(int((n_train + args.eval_tokens) * 1.05), 576, 0)  # room for the outlier filter
        datasets.append((f"{title} (d_in 576)", x[: -args.eval_tokens], x[-args.eval_tokens:]))
    if "real" in wanted:
        train, held_out, what = real_activations(int(n_train * 1.02) + 1024, args.eval_tokens, args.model, args.layer)
        datasets.append((f"real: {what}", train, held_out))
    lines, out = [], []
    for title, train, held_out in datasets:
        train, held_out = normalise(train, held_out)
        if len(train) < n_train:
            raise SystemExit(f"{title}: only {len(train):,} training tokens after outlier filtering")
        train, held_out = train[:n_train].to(device), held_out.to(device)
        d_in = train.shape[1]
        for expansion in (int(e) for e in args.expansions.split(",")):
            d_sae = expansion * d_in
            print(f"\n{title}, {expansion}× (d_sae {d_sae:,}) …", file=sys.stderr)
            results = race(names, train, held_out, args, d_sae)
            memory = {} if args.no_memory else {n: memory_of(n, d_in, d_sae, args) for n in names if not n.startswith("matmul")}
            block = report(f"{title}, {expansion}× (d_sae {d_sae:,}), {args.steps} steps of {args.batch}", results, memory)
            print("\n".join(block), flush=True)
            lines += block
            out.append({"data": title, "expansion": expansion, "results": results, "peak_mib": memory})
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": out}, indent=2, default=str))


if __name__ == "__main__":
    main()

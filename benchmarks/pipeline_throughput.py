"""The whole training pipeline against the forward passes it needs: `sae-explorer train` of a config, beside the same
process running only the model's forward passes over the same tokens (load, tokenize, run to the deepest site,
gather real-token rows; no SAE), and beside training from an activation cache of those rows (the SAE steps alone).

Each is a fresh process, timed whole (wall seconds, and the train run's own split into LM and SAE seconds from
run.json); rounds alternate the three so drift hits all alike. `forward ÷ train` is the issue-21 pipeline figure:
1.0 would mean the SAE steps cost nothing beside the forward passes.

    python benchmarks/pipeline_throughput.py                                  # configs/demo.yaml, 120k tokens
    python benchmarks/pipeline_throughput.py --extra "--sites L14R --expansion 16 --batch-size 4096"
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def forward_only(config: str, extra: list[str]) -> None:
    """The forward passes `train` would run for this config, and nothing else (run in a child process)."""
    from sae_core.activations.harvest import harvest_chunks
    from sae_core.cli import build_parser
    from sae_core.model.load import load_model
    from sae_core.model.sites import parse_sites
    from sae_core.options import config_from_args
    from sae_core.training.config import TrainConfig
    from sae_core.training.trainer import training_batches

    args = build_parser().parse_args(["train", "--config", config, *extra, "--out", "unused"])
    cfg: TrainConfig = config_from_args(args, TrainConfig)
    loaded = load_model(cfg.model)
    sites = parse_sites(cfg.sites, loaded.layout.n_layers)
    seen = 0
    batches = training_batches(cfg, loaded, lambda m: None)
    for chunk in harvest_chunks(loaded, sites, batches, cfg.chunk_tokens):
        seen += chunk.tokens
        if seen >= cfg.tokens:
            break
    print(json.dumps({"tokens": seen}))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--extra", default="", help="more `sae-explorer train` options, e.g. \"--sites L14R --expansion 16\"")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--forward-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.config = str(Path(args.config) if Path(args.config).exists() else ROOT / args.config)
    extra = shlex.split(args.extra)
    if args.forward_only:
        forward_only(args.config, extra)
        return
    cli = [sys.executable, "-m", "sae_core.cli"]
    work = Path(tempfile.mkdtemp(prefix="pipeline-"))
    times: dict[str, list[float]] = {"forward alone": [], "train": [], "SAE steps alone (from a cache)": []}
    split: list[dict[str, float]] = []
    try:
        for r in range(args.rounds):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            train_cmd = [*cli, "train", "--config", args.config, *extra, "--no-eval"]
            times["forward alone"].append(timed([sys.executable, __file__, "--forward-only", "--config", args.config,
                                                 "--extra", args.extra]))
            times["train"].append(timed([*train_cmd, "--out", str(work / "train")]))
            info = json.loads((work / "train" / "run.json").read_text())
            split.append(info["timing"])
            subprocess.run([*cli, "cache", "--sites", info["config"]["sites"], "--tokens", str(info["config"]["tokens"]),
                            "--context-size", str(info["config"]["context_size"]), "--out", str(work / "cache")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            times["SAE steps alone (from a cache)"].append(
                timed([*train_cmd, "--activation-cache", str(work / "cache"), "--out", str(work / "cached")]))
            print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.config} {args.extra}: whole processes, median of {args.rounds} round(s) (wall seconds)")
    for k, v in med.items():
        print(f"  {k:<32} {v:8.1f}")
    lm = statistics.median(s["lm_seconds"] for s in split)
    sae = statistics.median(s["sae_seconds"] for s in split)
    print(f"  train's own split: LM forward + harvest {lm:.1f} s, SAE steps {sae:.1f} s")
    print(f"  forward alone ÷ train: {med['forward alone'] / med['train']:.2f}")


if __name__ == "__main__":
    main()

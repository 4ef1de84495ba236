"""Time and peak memory of a circuit (`sae-explorer circuit`'s work) against prompt length and edge chunk size.

Each (length, chunk) runs in a fresh process: it loads the run's model and SAEs, then times node effects, edges
and the faithfulness curve separately, and reports the process's peak resident memory (`VmHWM`) beside its
resident memory just before the circuit (the model and SAEs loaded), so the circuit's own share is the
difference. Prompts are the run's held-out text cut to the length.

    python benchmarks/circuit_scaling.py runs/demo --lengths 16,64,256 --chunks 1,8
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/self/status (Linux only)")


def probe(run: str, length: int, chunk: int, max_nodes: int, method: str) -> dict:
    import torch

    from sae_core.circuits import edge_weights, faithfulness_curve, node_effects, ranked_nodes
    from sae_core.circuits.graph import CircuitOptions, curve_sizes, pruned_nodes
    from sae_core.circuits.means import run_means
    from sae_core.interventions.attribution import Target
    from sae_core.interventions.prompt_activations import tokenize_prompt
    from sae_core.runs.open_run import open_run_saes
    from sae_core.text.corpus import iter_documents

    torch.set_num_threads(2)
    opened = open_run_saes(run, device="cpu", log=lambda m: None)
    loaded, saes = opened.loaded, opened.saes
    texts = (doc.text for doc in iter_documents(opened.config.get("corpus"), "eval") if doc.text)
    text = " ".join(itertools.islice(texts, 200))
    prompt = tokenize_prompt(loaded, text, max_tokens=length)
    target = Target(len(prompt.ids) - 1, int(prompt.ids[-1]))
    means = run_means(opened, saes, 1024)
    before = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
    times = {}
    start = time.perf_counter()
    effects = node_effects(loaded, saes, prompt, target, method=method, means=means)
    times["nodes_s"] = time.perf_counter() - start
    nodes = pruned_nodes(ranked_nodes(effects), CircuitOptions(max_nodes=max_nodes))
    start = time.perf_counter()
    edges = edge_weights(loaded, saes, prompt, effects, nodes, means=means, chunk=chunk, upstream=nodes)
    times["edges_s"] = time.perf_counter() - start
    start = time.perf_counter()
    faithfulness_curve(loaded, saes, prompt, target, effects, curve_sizes(len(nodes), 6), means)
    times["curve_s"] = time.perf_counter() - start
    return {"tokens": len(prompt.ids), "chunk": chunk, "nodes": len(nodes), "edges": int((edges.weight != 0).sum()),
            **times, "rss_before_mib": before, "peak_mib": status_mib("VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--lengths", default="16,64,256")
    parser.add_argument("--chunks", default="1,8")
    parser.add_argument("--max-nodes", type=int, default=30)
    parser.add_argument("--method", default="atp", choices=["atp", "ig"])
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        length, chunk = map(int, args.probe.split(","))
        print(json.dumps(probe(args.run, length, chunk, args.max_nodes, args.method)))
        return
    print(f"{'tokens':>6} {'chunk':>5} {'nodes':>5} {'edges':>6} {'nodes s':>8} {'edges s':>8} {'curve s':>8} "
          f"{'RSS before MiB':>15} {'peak MiB':>9} {'circuit MiB':>12}")
    for length in (int(x) for x in args.lengths.split(",")):
        for chunk in (int(x) for x in args.chunks.split(",")):
            out = subprocess.run([sys.executable, __file__, args.run, "--probe", f"{length},{chunk}", "--max-nodes",
                                  str(args.max_nodes), "--method", args.method], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"probe {length},{chunk} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['tokens']:>6} {r['chunk']:>5} {r['nodes']:>5} {r['edges']:>6} {r['nodes_s']:>8.2f} {r['edges_s']:>8.2f} "
                  f"{r['curve_s']:>8.2f} {r['rss_before_mib']:>15,.0f} {r['peak_mib']:>9,.0f} "
                  f"{r['peak_mib'] - r['rss_before_mib']:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()

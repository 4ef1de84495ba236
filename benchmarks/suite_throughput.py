"""A trained suite's whole-run throughput against a plain forward pass over the same kind of tokens.

Reads the run's own timing (run.json `timing`: seconds producing chunks, i.e. LM forward passes and harvest,
and seconds in SAE steps, summed over every sitting), then times, in this process, plain forward passes of
the run's model with the run's batch shape: to the deepest site (what training needs) and through the LM
head (what evaluation needs). Prints the split and the ratios.

    python benchmarks/suite_throughput.py runs/suite-smollm2
    python benchmarks/suite_throughput.py runs/suite-gemma3 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import plain_forward, random_batch, timed

from sae_core.io import read_json
from sae_core.model.load import load_model
from sae_core.model.sites import parse_site
from sae_core.runs.run_folder import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run folder (its run.json has the timing of every sitting)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes of each kind (median)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    info = RunDir(args.run).require()
    cfg, timing = info["config"], info.get("timing")
    if not timing:
        raise SystemExit(f"{args.run}/run.json has no timing: it was trained before the trainer recorded it")
    sites = [parse_site(h) for h in info["sites"]]
    batch, context = info["parallel"]["lm_batch_size"], cfg["context_size"]
    loaded = load_model(cfg.get("model"))
    deepest = max(s.layer for s in sites)

    # tokens the LM processed (every position of every context) and tokens each SAE trained on
    lm_tokens = info["lm_batches"] * batch * context
    train_tokens = -(-cfg["tokens"] // cfg["batch_size"]) * cfg["batch_size"]
    lm_s, sae_s = timing["lm_seconds"], timing["sae_seconds"]
    total = lm_s + sae_s

    to_site, full = [], []
    for r in range(args.repeats + 1):  # the first round warms up and is discarded
        b = random_batch(loaded.tokenizer, batch, context, r)
        rate_site = timed(lambda b=b: plain_forward(loaded, b, deepest), batch * context)
        with torch.no_grad():
            rate_full = timed(lambda b=b: loaded.model(input_ids=b.input_ids, attention_mask=b.attention_mask), batch * context)
        if r:
            to_site.append(rate_site)
            full.append(rate_full)
    plain_site, plain_full = statistics.median(to_site), statistics.median(full)

    print(f"run {args.run}: {loaded.name}, {len(sites)} SAEs of d_sae {read_json(RunDir(args.run).sae_dirs()[0] / 'cfg.json')['d_sae']:,}, "
          f"{train_tokens:,} training tokens each, {batch} x {context}-token contexts per forward, {args.threads} threads")
    print("| measure | value |\n|---|---:|")
    print(f"| training wall time (all sittings) | {total / 60:,.1f} min |")
    print(f"| of which LM forward passes + harvest | {lm_s / 60:,.1f} min ({lm_s / total:.0%}) |")
    print(f"| of which SAE steps (all {len(sites)} SAEs) | {sae_s / 60:,.1f} min ({sae_s / total:.0%}) |")
    print(f"| whole run, training tokens/s | {train_tokens / total:,.1f} |")
    print(f"| LM tokens/s inside the run (harvest only) | {lm_tokens / lm_s:,.1f} |")
    print(f"| plain forward to layer {deepest}, tokens/s (this process) | {plain_site:,.1f} |")
    print(f"| plain forward with the LM head, tokens/s (this process) | {plain_full:,.1f} |")
    print(f"| whole run ÷ plain forward to layer {deepest} | {train_tokens / total / plain_site:.3f}× |")
    print(f"| SAE steps, SAE-tokens/s (tokens × SAEs) | {train_tokens * len(sites) / sae_s:,.0f} |")


if __name__ == "__main__":
    main()

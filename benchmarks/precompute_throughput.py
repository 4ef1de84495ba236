"""Precompute throughput: the streaming pass (LM forward + encode with 3 SAEs + sparse record) vs a plain forward.

Three TopK SAEs (16×, k = 32 by default) at the residual, MLP and attention sites of one layer;
the baseline is a plain forward pass of the model's own layers up to that layer, on the same
batches, alternating; the ratio is the median of the per-round ratios over `--repeats` rounds
after a warm-up round. Then the per-SAE
statistics stage (histograms, examples, logit effects, neighbours) is timed once on what was
recorded: that cost depends on d_sae and on the recorded activations, not on the LM.

    python benchmarks/precompute_throughput.py             # embedded SmolLM2-135M-Instruct, layer 15
    python benchmarks/precompute_throughput.py --model tiny --layer 2   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import plain_forward, random_batch, timed, tiny_or_embedded

from sae_core.features.feature_stats import feature_stats, select_examples
from sae_core.features.logit_effects import logit_effects
from sae_core.features.neighbours import coactivation_neighbours, decoder_cosine_neighbours
from sae_core.features.record import RecordWriter, read_site
from sae_core.model.sites import Site
from sae_core.saes import SAEConfig, create_sae


def random_topk(site: Site, d_in: int, d_sae: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    tensors = {"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros(d_sae), "W_dec": W_dec, "b_dec": torch.zeros(d_in)}
    return create_sae(SAEConfig("topk", d_in, d_sae, k=k, hook_name=site.hook_name)).load_tensors(tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: embedded SmolLM2; 'tiny' for a smoke test)")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="contexts per LM forward")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = tiny_or_embedded(args.model)
    d_in = loaded.layout.d_model
    d_sae = args.expansion * d_in
    sites = [Site(args.layer, kind) for kind in ("attn_out", "mlp_out", "resid_post")]
    saes = {s: random_topk(s, d_in, d_sae, args.k, i) for i, s in enumerate(sites)}
    tokens = args.batch * args.context
    print(f"model {loaded.name}: 3 TopK SAEs (d_sae {d_sae:,}, k {args.k}) at layer {args.layer}, "
          f"{args.batch}x{args.context} tokens per forward, {args.threads} threads")

    with tempfile.TemporaryDirectory() as tmp:
        writer = RecordWriter(Path(tmp) / "record", {"benchmark": True}, sites, shard_tokens=10**12)

        def record(batch):
            writer.add(loaded, saes, batch)
            writer.flush()  # one shard per batch: the disk writes are part of the cost

        results: dict[str, list[float]] = {"plain forward": [], "precompute pass": []}
        for r in range(args.repeats + 1):  # round 0 warms up
            batch = random_batch(loaded.tokenizer, args.batch, args.context, r)
            rates = {
                "plain forward": timed(lambda b=batch: plain_forward(loaded, b, args.layer), tokens),
                "precompute pass": timed(lambda b=batch: record(b), tokens),
            }
            if r:
                for key, value in rates.items():
                    results[key].append(value)
        writer.finish()

        ratios = [p / b for p, b in zip(results["precompute pass"], results["plain forward"])]
        print(f"\n{'measurement':<18} {'tokens/s':>10} {'vs plain forward':>17}")
        print(f"{'plain forward':<18} {statistics.median(results['plain forward']):>10,.0f} {1:>16.2f}x")
        print(f"{'precompute pass':<18} {statistics.median(results['precompute pass']):>10,.0f} {statistics.median(ratios):>16.2f}x"
              f"   (per-round ratios {min(ratios):.2f}–{max(ratios):.2f})")

        acts = read_site(Path(tmp) / "record", sites[-1])
        sae = saes[sites[-1]]
        stages = {}
        start = time.perf_counter()
        stats = feature_stats(acts, d_sae)
        select_examples(acts, stats.fires, n_top=20, n_intervals=5, per_interval=4, half_width=16)
        stages["histograms + examples"] = time.perf_counter() - start
        start = time.perf_counter()
        logit_effects(sae.W_dec, loaded.layout)
        stages["logit effects"] = time.perf_counter() - start
        start = time.perf_counter()
        decoder_cosine_neighbours(sae.W_dec)
        stages["decoder-cosine neighbours"] = time.perf_counter() - start
        start = time.perf_counter()
        coactivation_neighbours(acts, d_sae)
        stages["co-activation neighbours"] = time.perf_counter() - start
        print(f"\nstatistics stage for one SAE (d_sae {d_sae:,}) on {acts.counted.sum():,} recorded tokens:")
        for key, seconds in stages.items():
            print(f"  {key:<26} {seconds:6.2f} s")


if __name__ == "__main__":
    main()

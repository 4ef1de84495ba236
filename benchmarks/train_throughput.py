"""Training and harvest throughput, measured side by side in one process.

Prints tokens/s for:
  1. a plain forward pass of the model to the deepest layer needed (the baseline),
  2. the harvest: the same forward with 6 sites captured across 3 layers (early exit),
  3. training one SAE on cached activations (no LM), and
  4. training six SAEs fed by one forward pass (harvest + all six SAE steps),
and the ratios of 2 and 4 to the baseline. Runs alternate and the median is reported.

    python benchmarks/train_throughput.py            # embedded SmolLM2-135M-Instruct
    python benchmarks/train_throughput.py --model tiny  # a tiny random Qwen3 (smoke test)
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import plain_forward, random_batch, timed, tiny_or_embedded

from sae_core.activations.harvest import batch_activations
from sae_core.model.sites import Site, parse_sites
from sae_core.saes import SAEConfig, SAETrainingOptions, create_training_sae
from sae_core.training.site_trainer import make_adam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: embedded SmolLM2; 'tiny' for a smoke test)")
    parser.add_argument("--sites", default=None,
                        help="six sites across three layers (default: R+M at 10%%, R+A at 50%%, R+M at 87%% depth, "
                        "i.e. L3R,L3M,L15R,L15A,L26R,L26M on the embedded model)")
    parser.add_argument("--batch", type=int, default=8, help="contexts per LM forward")
    parser.add_argument("--context", type=int, default=128, help="tokens per context")
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sae-batch", type=int, default=4096, help="tokens per SAE step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = tiny_or_embedded(args.model)
    n = loaded.layout.n_layers
    early, middle, late = n // 10, n // 2, int(n * 0.87)
    default = f"L{early}R,L{early}M,L{middle}R,L{middle}A,L{late}R,L{late}M"
    sites = parse_sites(args.sites or default, n)
    deepest = max(s.layer for s in sites)
    tokens = args.batch * args.context
    d_in = loaded.layout.d_model
    print(f"model {loaded.name}: sites {', '.join(s.short for s in sites)}, deepest layer {deepest}, "
          f"{args.batch}x{args.context} tokens per forward, {args.threads} threads")

    def make_sae(site: Site, seed: int):
        cfg = SAEConfig("topk", d_in, args.expansion * d_in, k=args.k, hook_name=site.hook_name)
        sae = create_training_sae(cfg, SAETrainingOptions(), torch.Generator().manual_seed(seed))
        return sae, make_adam(sae.parameters(), 1e-4, (0.9, 0.999))

    def sae_step(sae, opt, x):
        out = sae.training_forward(x, dead_mask=None, step_frac=0.5)
        opt.zero_grad(set_to_none=True)
        sum(out.losses.values()).backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()

    saes = [make_sae(s, i) for i, s in enumerate(sites)]
    cached = torch.randn(args.sae_batch, d_in)  # mean norm ≈ sqrt(d_in), like normalised activations

    results: dict[str, list[float]] = {"plain forward": [], "harvest (6 sites)": [], "1 SAE step": [], "6 SAEs + harvest": []}
    for r in range(args.repeats + 1):  # the first round warms up and is discarded
        batch = random_batch(loaded.tokenizer, args.batch, args.context, r)
        rates = {
            "plain forward": timed(lambda b=batch: plain_forward(loaded, b, deepest), tokens),
            "harvest (6 sites)": timed(lambda b=batch: batch_activations(loaded, sites, b), tokens),
            "1 SAE step": timed(lambda: sae_step(*saes[0], cached), args.sae_batch),
        }

        def harvest_and_train():
            n_fwd = max(1, args.sae_batch // tokens)
            rows: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
            for i in range(n_fwd):
                acts = batch_activations(loaded, sites, random_batch(loaded.tokenizer, args.batch, args.context, 1000 + i))
                for s in sites:
                    rows[s].append(acts[s].flatten(0, 1))
            for (sae, opt), s in zip(saes, sites):
                sae_step(sae, opt, torch.cat(rows[s]) / rows[s][0].norm(dim=-1).mean() * d_in**0.5)

        rates["6 SAEs + harvest"] = timed(harvest_and_train, max(1, args.sae_batch // tokens) * tokens)
        if r:
            for key, value in rates.items():
                results[key].append(value)

    base = statistics.median(results["plain forward"])
    print(f"\n{'measurement':<22} {'tokens/s':>10} {'vs plain forward':>17}")
    for key, values in results.items():
        rate = statistics.median(values)
        ratio = f"{rate / base:.2f}x" if key in ("harvest (6 sites)", "6 SAEs + harvest", "plain forward") else ""
        print(f"{key:<22} {rate:>10,.0f} {ratio:>17}")


if __name__ == "__main__":
    main()

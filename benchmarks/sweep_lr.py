"""Batch size × learning rate sweep for a TopK SAE on one site, on activations harvested once.

Harvests `--tokens` training activations (train split) and 16k held-out activations (eval split) of
one residual site of the embedded model, then trains one SAE per `BATCH:LR` setting on exactly the same
activations and prints held-out FVU and dead fraction. This produced the table in docs/training.md:

    python benchmarks/sweep_lr.py --layer 14 --tokens 120000 --expansion 4 \\
        --settings 2048:none,512:none,512:1e-3,512:2e-3,256:2e-3,256:4e-3
    python benchmarks/sweep_lr.py --layer 15 --tokens 300000 --expansion 16 \\
        --settings 4096:none,1024:5e-4,1024:1e-3,512:1e-3,512:2e-3
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_core.activations.harvest import SiteStats, harvest_chunks
from sae_core.evaluation.metrics import ReconstructionAccumulator
from sae_core.model.load import load_model
from sae_core.model.sites import Site
from sae_core.saes import SAEConfig, SAETrainingOptions, create_training_sae
from sae_core.text.corpus import iter_documents
from sae_core.text.tokens import token_batches
from sae_core.training.config import TrainConfig
from sae_core.training.site_trainer import SiteTrainer

CHUNK = 32_768


def harvest(loaded, site: Site, split: str, n: int) -> torch.Tensor:
    """The first `n` real-token activations of `site` on the default corpus' `split`."""
    rows, got = [], 0
    batches = token_batches(iter_documents(None, split), loaded.tokenizer, 128, 8)
    for chunk in harvest_chunks(loaded, [site], batches, CHUNK):
        rows.append(chunk.acts[site])
        got += chunk.tokens
        if got >= n:
            break
    return torch.cat(rows)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=120_000, help="training tokens (harvested once)")
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--settings", default="2048:none,512:1e-3", help="BATCH:LR pairs; LR 'none' = default rule")
    args = parser.parse_args()
    torch.set_num_threads(2)

    loaded = load_model()
    site = Site(args.layer, "resid_post")
    d_in = loaded.layout.d_model
    d_sae = args.expansion * d_in
    train, held_out = harvest(loaded, site, "train", args.tokens), harvest(loaded, site, "eval", 16_384)
    stats = SiteStats.estimate(train[:CHUNK], outlier_factor=10.0, normalize=True)
    x_eval = held_out[stats.keep_mask(held_out)]
    print(f"{site.short}, d_sae {d_sae}, {args.tokens:,} training tokens")
    print(f"{'batch':>6} {'lr':>9} {'steps':>6} {'eval FVU':>9} {'dead':>6} {'seconds':>8}")
    for setting in args.settings.split(","):
        batch, lr = setting.split(":")
        cfg = TrainConfig(tokens=args.tokens, batch_size=int(batch), lr=None if lr == "none" else float(lr),
                          dead_tokens=40_000, expansion=args.expansion, k=args.k)
        sae = create_training_sae(SAEConfig("topk", d_in, d_sae, k=args.k), SAETrainingOptions(), torch.Generator().manual_seed(0))
        first = train[:CHUNK]
        sae.init_from_data(first[stats.keep_mask(first)] * stats.scale)
        trainer, shuffle = SiteTrainer(site, sae, stats, cfg), torch.Generator().manual_seed(0)
        start = time.time()
        for i in range(0, train.shape[0], CHUNK):
            if trainer.done:
                break
            trainer.feed(train[i : i + CHUNK], shuffle)
        sae_inf = trainer.to_inference()
        acc = ReconstructionAccumulator(d_in, d_sae)
        with torch.no_grad():
            acts = sae_inf.encode(x_eval)
            acc.update(x_eval, acts, sae_inf.decode(acts))
        m = acc.result()
        print(f"{batch:>6} {cfg.resolved_lr(d_sae):>9.2e} {trainer.steps:>6} {m['fvu']:>9.3f} "
              f"{m['dead_fraction']:>6.1%} {time.time() - start:>8.0f}")


if __name__ == "__main__":
    main()

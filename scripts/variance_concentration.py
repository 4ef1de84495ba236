"""How concentrated a model's activations are: the share of variance in the top principal directions, per site.

Explained variance weighs directions by their variance, so where one direction carries most of it an SAE can
explain most of the variance and still miss what the model reads (docs/suite.md, Gemma 3 270M).

    python scripts/variance_concentration.py --model gemma3-270m --sites L1R,L2R,L9R,L17R
"""

from __future__ import annotations

import argparse
import itertools

import torch

from sae_core.model.hooks import run_to_sites
from sae_core.model.load import load_model
from sae_core.model.sites import parse_sites
from sae_core.text.corpus import iter_documents
from sae_core.text.tokens import token_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="as for `sae-explorer train` (default: the embedded SmolLM2)")
    parser.add_argument("--sites", default="L1R,L2R,L9R,L17R")
    parser.add_argument("--batches", type=int, default=2, help="batches of 8 × 128 held-out tokens (default: 2)")
    args = parser.parse_args()
    loaded = load_model(args.model)
    sites = parse_sites(args.sites, loaded.layout.n_layers)
    acts: dict = {site: [] for site in sites}
    batches = token_batches(iter_documents(split="eval"), loaded.tokenizer, 128, 8)
    for batch in itertools.islice(batches, args.batches):
        out = run_to_sites(loaded.model, batch.input_ids, sites=sites, layout=loaded.layout)
        for site in sites:
            acts[site].append(out[site][:, 1:].reshape(-1, out[site].shape[-1]).float())  # position 0 left out
    print("| site | tokens | top-1 PC share | top-5 | top-20 | median token's max |x_i| ÷ median |x_i| |")
    print("|---|---:|---:|---:|---:|---:|")
    for site in sites:
        x = torch.cat(acts[site])
        x = x[x.norm(dim=1) <= 10 * x.norm(dim=1).median()]  # the trainer's outlier rule
        share = torch.linalg.svdvals(x - x.mean(0)) ** 2
        share = share / share.sum()
        ratio = x.abs().max(1).values.median() / x.abs().median()
        print(f"| {site.short} | {len(x):,} | {share[0]:.2f} | {share[:5].sum():.2f} | {share[:20].sum():.2f} | {ratio:,.0f} |")


if __name__ == "__main__":
    main()

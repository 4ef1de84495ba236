"""What circuit nodes are mean-ablated to: each feature's mean activation and each site's mean error term over
reference text (the run's held-out split by default), averaged over real tokens only."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..activations.harvest import sites_to_capture
from ..model.hooks import run_to_sites
from ..model.load import LoadedModel
from ..model.sites import Site
from ..runs.open_run import RunSAEs
from ..saes import SAE
from ..text.corpus import iter_documents
from ..text.tokens import TokenBatch, token_batches
from .nodes import SiteMeans, split_site


@torch.no_grad()
def site_means(loaded: LoadedModel, saes: dict[Site, SAE], batches: Iterable[TokenBatch], max_tokens: int) -> dict[Site, SiteMeans]:
    """Mean features `(d_sae,)` and mean error `(d_out,)` of every site over the real tokens of `batches`, up to
    `max_tokens` of them."""
    sums = {site: (torch.zeros(sae.cfg.d_sae, dtype=torch.float64), torch.zeros(sae.cfg.out_dim, dtype=torch.float64))
            for site, sae in saes.items()}
    seen = 0
    for batch in batches:
        acts = run_to_sites(loaded.model, batch.input_ids.to(loaded.device), batch.attention_mask.to(loaded.device),
                            sites_to_capture(saes), layout=loaded.layout)
        real = batch.real.to(loaded.device)
        for site, sae in saes.items():
            x = acts[site.target][real]  # (n, d_out) real tokens only
            f, e = split_site(sae, x, torch.ones(len(x), dtype=torch.bool, device=x.device), acts[site][real])
            sums[site][0].add_(f.sum(0).double().cpu())
            sums[site][1].add_(e.sum(0).double().cpu())
        seen += int(real.sum())
        if seen >= max_tokens:
            break
    if seen == 0:
        raise ValueError("the reference text gave no real tokens to average over")
    return {site: SiteMeans((f / seen).float(), (e / seen).float()) for site, (f, e) in sums.items()}


def run_means(opened: RunSAEs, saes: dict[Site, SAE], max_tokens: int) -> dict[Site, SiteMeans]:
    """`site_means` over the held-out split of the run's own corpus, in its context size."""
    docs = iter_documents(opened.config.get("corpus"), "eval")
    batches = token_batches(docs, opened.loaded.tokenizer, int(opened.config.get("context_size", 128)), 8)
    return site_means(opened.loaded, saes, batches, max_tokens)

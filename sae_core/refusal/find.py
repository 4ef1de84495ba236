"""Find refusal features: SAE features whose mean activation differs most between two sets of texts.

Two contrasts, computed at each chosen site:

- **prompt**: harmful vs harmless requests, read at the chat template's assistant-start tokens (the
  moment the model decides how to answer; special tokens such as `<|im_start|>` are skipped);
- **answer**: the model's own refusing vs complying answers, read on the first `ANSWER_TOKENS` tokens
  of each answer (where a refusal shows).

Features are ranked by the difference of mean activation (set a minus set b) and also scored by a
standardised effect size (Cohen's d with the pooled standard deviation). The classic
difference-of-means refusal direction (mean residual of a minus mean of b) is the baseline, and each
feature's decoder cosine with it is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from ..errors import UserError
from ..model.hooks import run_to_sites
from ..model.load import LoadedModel
from ..model.sites import Site
from ..saes import SAE
from ..text.tokens import render_chat, special_token_ids
from .generation import CHAT_HINT, answer_token_ids, chat_text, pad_id

ANSWER_TOKENS = 16
"""Answer tokens read per answer in the answer contrast."""


@dataclass(frozen=True)
class SiteReading:
    """What one set of texts gives at one site: per-text mean SAE activations and mean residuals."""

    features: Tensor
    """(N, d_sae) each text's mean feature activation over its read positions."""
    resid: Tensor
    """(N, d_model) each text's mean residual over the same positions."""
    resid_norm: float
    """Median norm of the residual at the read positions (the scale steering strengths are given in)."""


def assistant_start_positions(loaded: LoadedModel) -> int:
    """How many tokens the chat template adds to open the assistant's turn (e.g. `<|im_start|>assistant\\n`)."""
    tokenizer = loaded.tokenizer
    messages = [{"role": "user", "content": "x"}]
    with_start, without = (
        tokenizer(render_chat(messages, tokenizer, add_generation_prompt=start, hint=CHAT_HINT, error=UserError),
                  add_special_tokens=False)["input_ids"]
        for start in (True, False)
    )
    return max(0, len(with_start) - len(without))


def prompt_rows(loaded: LoadedModel, messages: Sequence[str], n_positions: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Each message's chat-prompt token ids and the positions to read: the assistant-start tokens (or the
    last `n_positions` tokens) that are not special tokens."""
    n = n_positions or assistant_start_positions(loaded) or 4
    special = set(special_token_ids(loaded.tokenizer))
    rows = []
    for message in messages:
        ids = loaded.tokenizer(chat_text(loaded, message), add_special_tokens=False)["input_ids"]
        positions = [p for p in range(max(1, len(ids) - n), len(ids)) if ids[p] not in special]
        rows.append((ids, positions or [len(ids) - 1]))
    return rows


def answer_rows(loaded: LoadedModel, messages: Sequence[str], answers: Sequence[str], n_tokens: int = ANSWER_TOKENS) -> list[tuple[list[int], list[int]]]:
    """Each prompt + answer's token ids and the positions of the answer's first `n_tokens` non-special tokens."""
    special = set(special_token_ids(loaded.tokenizer))
    rows = []
    for message, answer in zip(messages, answers):
        ids, start = answer_token_ids(loaded, message, answer)
        positions = [p for p in range(start, min(len(ids), start + n_tokens)) if ids[p] not in special]
        rows.append((ids, positions or [start - 1]))
    return rows


@torch.no_grad()
def read_sites(
    loaded: LoadedModel,
    saes: dict[Site, SAE],
    rows: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 32,
) -> dict[Site, SiteReading]:
    """Run the texts (right-padded, so positions are exact for any model) to the sites and average each
    text's SAE activations and residuals over its read positions."""
    device = loaded.device
    pad = pad_id(loaded.tokenizer)
    feats: dict[Site, list[Tensor]] = {s: [] for s in saes}
    resid: dict[Site, list[Tensor]] = {s: [] for s in saes}
    norms: dict[Site, list[Tensor]] = {s: [] for s in saes}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, _) in enumerate(chunk):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        acts = run_to_sites(loaded.model, ids.to(device), mask.to(device), sites=list(saes), layout=loaded.layout)
        for site, sae in saes.items():
            for i, (_, positions) in enumerate(chunk):
                x = acts[site][i, positions].float()
                feats[site].append(sae.encode(x.to(sae.W_dec.dtype)).float().mean(0).cpu())
                resid[site].append(x.mean(0).cpu())
                norms[site].append(x.norm(dim=-1).cpu())
    return {
        site: SiteReading(torch.stack(feats[site]), torch.stack(resid[site]), float(torch.cat(norms[site]).median()))
        for site in saes
    }


def rank_features(a: Tensor, b: Tensor, direction: Tensor, w_dec: Tensor, top: int) -> pd.DataFrame:
    """The `top` features most more active on set a than on set b (difference of means), with Cohen's d,
    how often each fires in either set, and the decoder's cosine with `direction`."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    diff = mean_a - mean_b
    var_a = a.var(0, correction=1) if len(a) > 1 else torch.zeros_like(mean_a)
    var_b = b.var(0, correction=1) if len(b) > 1 else torch.zeros_like(mean_b)
    dof = max(1, len(a) + len(b) - 2)
    pooled = (((len(a) - 1) * var_a + (len(b) - 1) * var_b) / dof).sqrt()
    effect = torch.where(pooled > 1e-8, diff / pooled.clamp_min(1e-8), torch.zeros_like(diff))
    order = diff.argsort(descending=True)[:top]
    unit = direction / direction.norm().clamp_min(1e-12)
    cos = torch.nn.functional.normalize(w_dec[order].float(), dim=-1) @ unit.float()
    return pd.DataFrame({
        "feature": order.tolist(),
        "diff": diff[order].tolist(),
        "effect": effect[order].tolist(),
        "mean_a": mean_a[order].tolist(),
        "mean_b": mean_b[order].tolist(),
        "fires_a": (a[:, order] > 0).float().mean(0).tolist(),
        "fires_b": (b[:, order] > 0).float().mean(0).tolist(),
        "cos_direction": cos.tolist(),
        "rank_by_effect": (effect.argsort(descending=True).argsort()[order] + 1).tolist(),
    })


@dataclass(frozen=True)
class Contrast:
    """One contrast at one site: the ranked features, the difference-of-means direction, the set sizes."""

    features: pd.DataFrame
    direction: Tensor
    n_a: int
    n_b: int
    resid_norm: float


def contrast(saes: dict[Site, SAE], a: dict[Site, SiteReading], b: dict[Site, SiteReading], top: int) -> dict[str, Contrast]:
    """Rank each site's features and take its difference-of-means direction, set a against set b; keyed by the
    SAE's short name (as the study's files are)."""
    out = {}
    for site, sae in saes.items():
        direction = a[site].resid.mean(0) - b[site].resid.mean(0)
        ranked = rank_features(a[site].features, b[site].features, direction, sae.W_dec.detach().cpu(), top)
        out[site.short] = Contrast(ranked, direction, len(a[site].features), len(b[site].features),
                             (a[site].resid_norm + b[site].resid_norm) / 2)
    return out

"""Nearest-feature search against brute force."""

from __future__ import annotations

import pytest
import torch

from sae_core.features.neighbours import coactivation_neighbours, decoder_cosine_neighbours
from sae_core.features.record import SparseActivations


def test_decoder_cosine_neighbours_are_the_exact_nearest_across_blocks():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(50, 8, generator=g)
    nb = decoder_cosine_neighbours(W, n=5, block=7)  # blocks smaller than d_sae
    unit = torch.nn.functional.normalize(W, dim=-1)
    sims = unit @ unit.T
    sims.fill_diagonal_(-2)
    top = sims.topk(5, dim=-1)
    assert torch.equal(nb.ids, top.indices)
    assert torch.allclose(nb.scores, top.values, atol=1e-6)


def test_small_dictionary_pads_missing_neighbours():
    nb = decoder_cosine_neighbours(torch.randn(3, 4), n=5)
    assert nb.ids.shape == (3, 5)
    assert (nb.ids[:, 2:] == -1).all() and nb.scores[:, 2:].isnan().all()
    assert all(i not in row for i, row in enumerate(nb.ids[:, :2].tolist()))


def test_coactivation_neighbours_rank_by_jaccard_with_exact_counts():
    g = torch.Generator().manual_seed(1)
    n_tokens, d_sae = 300, 12
    fires = torch.rand(n_tokens, d_sae, generator=g) < torch.linspace(0.05, 0.6, d_sae)
    fires[:, 5] = fires[:, 4]  # 4 and 5 always fire together
    fires[:, 11] = False  # dead
    tok, feat = fires.nonzero(as_tuple=True)
    acts = SparseActivations(torch.ones(tok.numel()), feat, tok * 3, torch.ones(n_tokens, 3, dtype=torch.bool))
    nb = coactivation_neighbours(acts, d_sae, n=4, max_block_elements=5 * d_sae)  # blocks of 5 rows
    A = fires.float()
    both = A.T @ A
    n = A.sum(0)
    jaccard = both / (n[:, None] + n[None, :] - both).clamp_min(1)
    for f in range(d_sae):
        candidates = sorted((float(jaccard[f, o]) for o in range(d_sae) if o != f and both[f, o] > 0), reverse=True)
        got = [i for i in nb.ids[f].tolist() if i >= 0]
        assert len(got) == min(4, len(candidates)) and len(set(got)) == len(got) and f not in got
        assert nb.scores[f, : len(got)].tolist() == pytest.approx(candidates[: len(got)])  # the true top scores
        for i, o in enumerate(got):
            assert nb.counts[f, i] == both[f, o]
            assert abs(float(nb.scores[f, i]) - float(jaccard[f, o])) < 1e-6
    assert nb.ids[4, 0] == 5 and nb.scores[4, 0] == 1.0
    assert (nb.ids[11] == -1).all() and nb.scores[11].isnan().all()

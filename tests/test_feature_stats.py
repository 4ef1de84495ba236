"""Feature statistics against brute force on a dense random activation tensor."""

from __future__ import annotations

import pytest
import torch

from sae_core.features.feature_stats import (
    feature_stats,
    interval_samples,
    lexsort,
    select_examples,
    top_examples,
    windows,
)
from sae_core.features.record import SparseActivations

N_CTX, T, D_SAE = 12, 20, 7


def _dense_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, SparseActivations]:
    """Dense activations `(N_CTX, T, D_SAE)` (sparse-ish, with ties and a dead feature) and their sparse form."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(N_CTX, T, D_SAE, generator=g) * 5
    dense[torch.rand(N_CTX, T, D_SAE, generator=g) < 0.6] = 0.0
    dense = (dense * 4).round() / 4  # ties
    dense[..., 3] = 0.0  # feature 3 is dead
    counted = torch.rand(N_CTX, T, generator=g) > 0.15
    counted[:, 0] = False
    dense = dense * counted[..., None]
    ctx, pos, feat = dense.nonzero(as_tuple=True)
    acts = SparseActivations(dense[ctx, pos, feat], feat, ctx * T + pos, counted)
    perm = torch.randperm(acts.values.numel(), generator=g)  # the record's order must not matter
    acts = SparseActivations(acts.values[perm], acts.latents[perm], acts.tokens[perm], counted)
    return dense, counted, acts


def test_density_max_mean_and_histogram_are_exact():
    dense, counted, acts = _dense_case()
    stats = feature_stats(acts, D_SAE, n_bins=10)
    assert stats.n_tokens == int(counted.sum())
    flat = dense[counted]  # (n_counted, D_SAE)
    for f in range(D_SAE):
        fired = flat[:, f][flat[:, f] > 0]
        assert stats.fires[f] == fired.numel()
        assert stats.density[f] == pytest.approx(fired.numel() / counted.sum().item())
        assert stats.max_act[f] == (fired.max() if fired.numel() else 0.0)
        assert stats.mean_act[f] == pytest.approx(float(fired.mean()) if fired.numel() else 0.0, rel=1e-6)
        assert stats.hist_counts[f].sum() == fired.numel()
        if fired.numel():
            expected = torch.histc(fired, bins=10, min=0.0, max=float(fired.max()))
            assert stats.hist_counts[f].tolist() == expected.long().tolist()
    assert stats.fires[3] == 0 and stats.max_act[3] == 0


def test_top_examples_are_the_true_top_contexts():
    dense, _, acts = _dense_case(1)
    feats, ranks, tokens, values = top_examples(acts, n_top=5)
    for f in range(D_SAE):
        per_ctx_max = dense[:, :, f].max(dim=1)
        expected = sorted(((float(v), c) for c, v in enumerate(per_ctx_max.values) if v > 0), key=lambda x: (-x[0], x[1]))[:5]
        mine = feats == f
        assert ranks[mine].tolist() == list(range(len(expected)))
        assert values[mine].tolist() == [v for v, _ in expected]
        ctx = (tokens[mine] // T).tolist()
        assert sorted(ctx) == sorted(c for _, c in expected)
        # each example sits on the context's first maximum
        for c, t in zip(ctx, (tokens[mine] % T).tolist()):
            column = dense[c, :, f]
            assert t == int((column == column.max()).nonzero()[0])


def test_interval_samples_fall_in_their_quantile_interval():
    dense, counted, acts = _dense_case(2)
    stats = feature_stats(acts, D_SAE)
    g = torch.Generator().manual_seed(0)
    feats, intervals, ranks, tokens, values = interval_samples(acts, stats.fires, 4, 3, g)
    for f in range(D_SAE):
        fired = sorted(dense[counted][:, f][dense[counted][:, f] > 0].tolist())
        mine = feats == f
        for j in range(1, 5):
            # interval j holds the firings whose rank r (by value) has r * 4 // n + 1 == j
            in_interval = [v for r, v in enumerate(fired) if r * 4 // len(fired) + 1 == j]
            sel = mine & (intervals == j)
            assert sel.sum() == min(3, len(in_interval))
            for v in values[sel].tolist():
                assert min(in_interval) <= v <= max(in_interval)
            assert ranks[sel].tolist() == list(range(int(sel.sum())))
        # the sampled token really has that value
        for t, v in zip(tokens[mine].tolist(), values[mine].tolist()):
            assert dense[t // T, t % T, f] == v


def test_windows_match_the_dense_slices_and_shift_at_context_edges():
    dense, _, acts = _dense_case(3)
    feats = torch.tensor([0, 1, 2, 4])
    tokens = torch.tensor([0 * T + 0, 3 * T + 10, 5 * T + T - 1, 7 * T + 4])
    starts, values = windows(acts, feats, tokens, half_width=3)
    assert starts.tolist() == [0, 7, T - 7, 1]
    for i in range(4):
        c = int(tokens[i] // T)
        expected = dense[c, int(starts[i]) : int(starts[i]) + 7, int(feats[i])]
        assert torch.equal(values[i], expected)


def test_windows_longer_than_the_context_are_nan_padded():
    dense, _, acts = _dense_case(4)
    starts, values = windows(acts, torch.tensor([0]), torch.tensor([2 * T + 5]), half_width=T)
    assert starts.tolist() == [0]
    assert torch.equal(values[0, :T], dense[2, :, 0])
    assert values[0, T:].isnan().all()


def test_select_examples_orders_by_feature_kind_rank():
    _, _, acts = _dense_case(5)
    stats = feature_stats(acts, D_SAE)
    ex = select_examples(acts, stats.fires, n_top=3, n_intervals=5, per_interval=2, half_width=2)
    keys = list(zip(ex.features.tolist(), ex.kinds.tolist(), ex.ranks.tolist()))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert 3 not in ex.features.tolist()  # dead features have no examples
    assert (ex.activations > 0).all()


def test_lexsort_matches_python_sort():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randint(0, 4, (200,), generator=g) for _ in range(3))
    order = lexsort(a, b, c, descending=(False, True, False))
    expected = sorted(range(200), key=lambda i: (int(a[i]), -int(b[i]), int(c[i]), i))
    assert order.tolist() == expected

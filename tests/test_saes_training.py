"""Each architecture learns synthetic sparse data: a few hundred Adam steps cut the loss and reach a sane FVU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from sae_core.saes import ARCHITECTURES, SAEConfig, SAETrainingOptions, create_training_sae

D_IN, N_FEATURES, D_SAE, K = 32, 64, 128, 4


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls run fastest (and steadiest on a busy 2-core machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic(n: int, seed: int) -> torch.Tensor:
    """`(n, D_IN)`: each token a non-negative combination of ~K of N_FEATURES fixed random unit directions."""
    directions = torch.randn(N_FEATURES, D_IN, generator=torch.Generator().manual_seed(123))
    directions /= directions.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(n, N_FEATURES, generator=g) < K / N_FEATURES
    magnitude = torch.rand(n, N_FEATURES, generator=g) * 1.5 + 0.5
    return (present * magnitude) @ directions


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# The standard SAE's default L1 weight (5, for d_in in the hundreds) shrinks these small features away.
OPTIONS = {"standard": SAETrainingOptions(l1_coefficient=1.0)}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_training_learns_synthetic_sparse_data(arch: str) -> None:
    x, x_eval = synthetic(8192, seed=1), synthetic(2048, seed=2)
    scale = D_IN**0.5 / float(x.norm(dim=1).mean())  # the trainer's normalisation: mean norm sqrt(d_in)
    x_n = x * scale
    cfg = SAEConfig(arch, D_IN, D_SAE, k=K if arch in ("topk", "batchtopk") else None)
    sae = create_training_sae(cfg, OPTIONS.get(arch, SAETrainingOptions()), torch.Generator().manual_seed(0))
    sae.init_from_data(x_n[:1024])
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    probe = x_n[:1024]

    def probe_loss() -> float:
        with torch.no_grad():
            return float(sum(sae.training_forward(probe, dead_mask=None, step_frac=1.0).losses.values()))

    before = probe_loss()
    steps, batch = 300, 256
    since_fired = torch.zeros(D_SAE, dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    saw_dead = False
    for step in range(steps):
        rows = x_n[torch.randint(0, x_n.shape[0], (batch,), generator=g)]
        dead = since_fired >= 2048
        saw_dead |= bool(dead.any())
        out = sae.training_forward(rows, dead_mask=dead if dead.any() else None, step_frac=step / steps)
        loss = sum(out.losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        since_fired += batch
        since_fired[out.fired] = 0
    after = probe_loss()

    assert after < 0.5 * before, (before, after)
    torch.testing.assert_close(sae.W_dec.detach().norm(dim=1), torch.ones(D_SAE))
    inference = sae.to_inference(scale)  # evaluated in the ORIGINAL units, so folding is checked end to end
    with torch.no_grad():
        acts = inference.encode(x_eval)
        held_out_fvu = fvu(x_eval, inference.decode(acts))
    l0 = float((acts > 0).sum(-1).float().mean())
    assert held_out_fvu < 0.3, held_out_fvu
    assert 1 <= l0 <= 8 * K, l0  # L1 leaves many small activations; the others stay near K
    if arch in ("topk", "batchtopk"):
        assert saw_dead  # AuxK ran on real dead latents
        assert 0.5 * K <= l0 <= 2 * K  # for batchtopk: the learned threshold reproduces the training sparsity

"""The encoder's block matmul on CPU: numpy's BLAS and PyTorch's give `b + x @ W` alike, and the machine's choice is
fixed by its CPU and libraries (an override by environment variable, a clear error for a wrong value)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from sae_core.errors import UserError
from sae_core.saes import cpu_matmul
from sae_core.saes.cpu_matmul import encoder_block, numpy_backend


@pytest.mark.parametrize("name", ["torch", "numpy"])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_encoder_block_is_b_plus_x_times_W_or_x_times_W(choose_matmul, name, rows, monkeypatch):
    choose_matmul(name)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the rows split over two threads (ragged at 7)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 24, generator=g).T  # the training SAEs' layout: a view of the per-latent (d_sae, d_in) rows
    x, b = torch.randn(rows, 24, generator=g), torch.randn(40, generator=g)
    for bias in (b, None):
        out = torch.full((rows, 40), float("nan"))
        got = encoder_block(bias, x, W, out)
        assert got.data_ptr() == out.data_ptr()
        want = x.double() @ W.double() + (0 if bias is None else b.double())
        torch.testing.assert_close(out, want.float(), rtol=1e-5, atol=1e-5)


def test_small_blocks_other_dtypes_and_gradients_take_pytorchs_path(choose_matmul, monkeypatch):
    choose_matmul("numpy")
    x = torch.randn(5, 8, dtype=torch.float64)
    W = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    out = torch.empty(5, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(encoder_block(torch.zeros(3, dtype=torch.float64), x, W, out), x @ W)
    monkeypatch.setattr(cpu_matmul, "MIN_BLOCK_ELEMENTS", 16)
    calls = []
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(a[1].shape) or k["out"])
    encoder_block(torch.zeros(3), torch.randn(5, 3), torch.randn(3, 3), torch.empty(5, 3))  # 15 entries: PyTorch's
    encoder_block(torch.zeros(4), torch.randn(5, 3), torch.randn(3, 4), torch.empty(5, 4))  # 20: numpy's
    assert calls == [(5, 3)]


def test_the_choice_follows_the_cpu_and_the_override(choose_matmul, monkeypatch):
    choose_matmul(None)
    monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: "GenuineIntel")
    assert not numpy_backend()
    numpy_backend.cache_clear()
    monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: "AuthenticAMD")
    openblas = cpu_matmul._openblas() is not None
    assert numpy_backend() == (openblas and torch.backends.mkl.is_available())
    choose_matmul("torch")
    assert not numpy_backend()
    choose_matmul("NumPy")
    assert numpy_backend()
    choose_matmul("mkl")
    with pytest.raises(UserError, match="SAE_EXPLORER_MATMUL='mkl' is not one of auto, torch, numpy"):
        numpy_backend()


class StandInBlas:
    """threadpoolctl's controller as `encoder_block` uses it: `limit(limits=n)` sets the thread count while open."""

    def __init__(self) -> None:
        self.threads = 2

    @contextlib.contextmanager
    def limit(self, limits: int):
        before, self.threads = self.threads, limits
        try:
            yield
        finally:
            self.threads = before


@pytest.mark.parametrize("torch_threads, parts", [(2, [3, 4]), (1, [7])])
def test_each_part_runs_one_blas_thread_and_an_unknown_blas_threads_itself(choose_matmul, monkeypatch, torch_threads, parts):
    choose_matmul("numpy")
    blas = StandInBlas()
    monkeypatch.setattr(cpu_matmul, "_openblas", lambda: blas)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    calls: list[tuple[int, int]] = []
    matmul = np.matmul
    monkeypatch.setattr(np, "matmul", lambda a, w, out: calls.append((a.shape[0], blas.threads)) or matmul(a, w, out=out))
    x, W, b = torch.randn(7, 6), torch.randn(6, 5), torch.randn(5)
    torch.testing.assert_close(encoder_block(b, x, W, torch.empty(7, 5)), x @ W + b)
    assert sorted(calls) == [(rows, 1) for rows in parts]  # PyTorch's thread count of parts, OpenBLAS at one thread
    assert blas.threads == 2  # and back to its own count after the block
    calls.clear()
    monkeypatch.setattr(cpu_matmul, "_openblas", lambda: None)  # a BLAS threadpoolctl cannot hold: one whole call
    torch.testing.assert_close(encoder_block(b, x, W, torch.empty(7, 5)), x @ W + b)
    assert calls == [(7, 2)]


def test_a_forked_child_multiplies_with_threads_of_its_own(choose_matmul):
    """The pool's threads do not survive a fork: a child that reused it would wait for them forever."""
    import multiprocessing

    choose_matmul("numpy")
    x, W, b = torch.randn(8, 6), torch.randn(6, 5), torch.randn(5)
    encoder_block(b, x, W, torch.empty(8, 5))  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_block_in_child, (x, W, b)).get(timeout=60)
    torch.testing.assert_close(got, x @ W + b)


def _block_in_child(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    torch.set_num_threads(2)
    return encoder_block(b, x, W, torch.empty(x.shape[0], W.shape[1]))

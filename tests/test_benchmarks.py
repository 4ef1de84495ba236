"""The trainer benchmark runs end to end (tiny sizes): every trainer steps, is evaluated and has its memory probed.

No timing is asserted here; the figures come from the full runs recorded in benchmarks/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_train_vs_peers_runs_every_trainer_on_the_same_data(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(BENCHMARKS / "train_vs_peers.py"), "--data", "synthetic,lowrank,heavytail", "--steps", "3",
           "--warmup", "1", "--batch", "256", "--expansions", "2", "--eval-tokens", "512", "--threads", "1", "--json",
           str(out), "--trainers", "ours,plain,sparsify,saelens,saelens-sparse,matmul"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("ours vs the fastest peer", "ours ÷ the encoder matmul alone", "whole-process peak"):
        assert done.stdout.count(line) == 3, line  # once per data set
    runs = json.loads(out.read_text())["runs"]
    assert [r["data"].split(" (")[0] for r in runs] == [
        "synthetic sparse superpositions", "synthetic dense low-rank + noise", "synthetic heavy-tailed norms"]
    for run in runs:
        assert set(run["results"]) == {"ours", "plain", "sparsify", "saelens", "saelens-sparse", "matmul"}
        for name, r in run["results"].items():
            assert r["tokens_per_s"] > 0, name
            if name == "matmul":
                assert name not in run["peak_mib"]
                continue
            assert 0 < r["eval_fvu"] < 2, name
            step, whole = run["peak_mib"][name]
            assert 0 < step < whole, name  # the whole process holds more than one step's share
        # ours and plain share the SAE, its initialisation and the loss: only the speed may differ
        assert run["results"]["ours"]["eval_fvu"] == pytest.approx(run["results"]["plain"]["eval_fvu"], rel=1e-3)


def test_lm_forward_blas_runs_the_model_through_numpys_blas_to_the_same_activations():
    cmd = [sys.executable, str(BENCHMARKS / "lm_forward_blas.py"), "--model", "tiny", "--site", "L2R", "--batches", "2",
           "--rounds", "1", "--threads", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=BENCHMARKS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" × 64 ") >= 2  # the tiny model's Linear shapes, each timed alone
    forward = next(line for line in done.stdout.splitlines() if line.startswith("forward to L2R"))
    assert float(forward.rsplit("largest difference ", 1)[1].split()[0]) < 1e-5  # the same model, another BLAS


def test_synthetic_activations_have_sparse_structure():
    from train_vs_peers import synthetic_activations

    x = synthetic_activations(2048, 64, seed=0, n_features=256, active=4.0)
    assert x.shape == (2048, 64)
    torch.testing.assert_close(x, synthetic_activations(2048, 64, seed=0, n_features=256, active=4.0))
    # a handful of directions per row: far from isotropic noise, whose top singular values would be flat
    s = torch.linalg.svdvals(x - x.mean(0))
    assert s[0] / s[-1] > 3


def test_native_topk_kernel_selects_what_torch_topk_selects():
    """The C++ top-k that topk_kernels.py times against ours must select the same values, or its timing says nothing."""
    import os

    from topk_kernels import NativeTopK, compile_native

    fn = compile_native()
    if fn is None:
        assert os.environ.get("CI") != "true", "g++ is missing on CI"
        pytest.skip("no g++ to compile benchmarks/topk_native.cpp")
    native = NativeTopK(fn, threads=2)
    g = torch.Generator().manual_seed(0)
    cases = {
        "normal": torch.randn(64, 1000, generator=g),
        "ties": torch.randint(0, 3, (64, 1000), generator=g).float(),
        "zeros": torch.zeros(8, 96),
        "negative": -torch.rand(16, 333, generator=g),
        "width k": torch.randn(4, 32, generator=g),
    }
    for name, pre in cases.items():
        k = min(32, pre.shape[1])
        values, indices = torch.empty(pre.shape[0], k), torch.empty(pre.shape[0], k, dtype=torch.long)
        native(pre, k, values, indices)
        torch.testing.assert_close(values.sort(1).values, pre.topk(k, dim=1).values.sort(1).values, rtol=0, atol=0, msg=name)
        assert torch.equal(pre.gather(1, indices), values), name
        assert (indices.sort(1).values.diff(dim=1) > 0).all(), name  # k distinct columns
    with pytest.raises(ValueError, match="NaN"):
        native(torch.tensor([[1.0, float("nan"), 0.0]]), 2, torch.empty(1, 2), torch.empty(1, 2, dtype=torch.long))

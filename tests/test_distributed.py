"""torchrun with two gloo CPU processes: data- and site-parallel training, rank-count-independent checkpoints,
sharded evaluation and precompute, each compared with one process on the same data and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import load_file

from sae_core.cli import main
from sae_core.errors import UserError
from sae_core.model.batch_size import contexts_that_fit
from sae_core.parallel import Parallel, site_owners

SITES = "L0R,L1M,L1A"


def _train_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(model), "--corpus", str(corpus), "--sites", SITES, "--tokens", "3k", "--batch-size", "256",
        "--chunk-tokens", "1k", "--expansion", "2", "--k", "4", "--dead-tokens", "1k", "--checkpoint-every", "1k",
        "--eval-tokens", "1k", "--ce-tokens", "256", "--lm-batch-size", "4", "--context-size", "32", "--device", "cpu",
        "--threads", "1", "--out", str(out), *extra,
    ]


def torchrun(args: list[str], n: int = 2) -> subprocess.CompletedProcess:
    """Run `sae-explorer ARGS` as an n-process torchrun job (gloo on CPU); fail with its output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m", "sae_core.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {
        f"{d.name}/{k}": v for d in sorted((run / "saes").iterdir()) for k, v in load_file(d / "sae_weights.safetensors").items()
    }


def _metrics(run: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "metrics.json").read_text()) for d in sorted((run / "saes").iterdir())}


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(_train_args(tiny_model_dir, tiny_corpus, out)) == 0
    return out


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_data_parallel_matches_one_process(arch, one_process, tiny_model_dir, tiny_corpus, tmp_path):
    single = one_process
    if arch != "topk":
        single = tmp_path / "single"
        assert main(_train_args(tiny_model_dir, tiny_corpus, single, "--arch", arch)) == 0
    out = tmp_path / "dp"
    torchrun(_train_args(tiny_model_dir, tiny_corpus, out, "--arch", arch, "--parallel", "data"))
    a, b = _weights(single), _weights(out)
    assert a.keys() == b.keys()
    for name in a:  # the same batches, split over two ranks: equal up to the order of float sums
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)
    for site, m in _metrics(single).items():
        other = _metrics(out)[site]
        for key in ("fvu", "l0", "mse", "ce_loss_recovered_raw", "delta_lm_loss_se", "kl_div", "dead_fraction", "eval_tokens", "ce_tokens"):
            assert other[key] == pytest.approx(m[key], rel=1e-3, abs=1e-6), (site, key)
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (single / "train_log.jsonl").read_text().splitlines()]
    assert len(logs) == len(reference)  # written once (by rank 0), with metrics of the whole batch
    for got, want in zip(logs, reference):
        assert got["fvu"] == pytest.approx(want["fvu"], rel=1e-3) and got["l0"] == pytest.approx(want["l0"], rel=1e-4)
    assert json.loads((out / "run.json").read_text())["parallel"]["ranks"] == 2


def test_site_parallel_matches_training_sites_one_by_one(one_process, tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "sites"
    torchrun(_train_args(tiny_model_dir, tiny_corpus, out, "--parallel", "sites", "--no-eval"))
    together = _weights(out)
    for site in SITES.split(","):
        alone = tmp_path / f"alone-{site}"
        args = _train_args(tiny_model_dir, tiny_corpus, alone, "--no-eval")
        args[args.index(SITES)] = site
        assert main(args) == 0
        for name, tensor in _weights(alone).items():
            assert torch.equal(together[name], tensor), name  # each SAE trained whole, on one rank
    # and a site's SAE does not depend on the other sites trained with it
    assert all(torch.equal(t, _weights(one_process)[k]) for k, t in together.items())
    info = json.loads((out / "run.json").read_text())
    assert set(info["site_stats"]) == {f"blocks.{s}" for s in ("0.hook_resid_post", "1.hook_mlp_out", "1.hook_attn_out")}


@pytest.mark.parametrize("mode", ["data", "sites"])
def test_two_rank_checkpoint_resumes_on_one_rank(mode, one_process, tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "resumed"
    torchrun(_train_args(tiny_model_dir, tiny_corpus, out, "--parallel", mode, "--stop-after", "1024"))
    manifest = json.loads((out / "checkpoints" / "state.json").read_text())
    assert len(manifest["sites"]) == 3 and all((out / "checkpoints" / f).is_file() for f in manifest["sites"].values())
    assert json.loads((out / "run.json").read_text())["status"] == "training"
    assert main(_train_args(tiny_model_dir, tiny_corpus, out)) == 0  # one process picks the job up
    a, b = _weights(one_process), _weights(out)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)
    assert not (out / "checkpoints").exists()


def test_two_rank_precompute_matches_one_rank(one_process, tmp_path):
    import shutil

    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"ranks{n}"
        shutil.copytree(one_process, runs[n])
    args = ["--tokens", "1500", "--top", "5", "--window", "4", "--device", "cpu"]
    assert main(["precompute", str(runs[1]), *args]) == 0
    torchrun(["precompute", str(runs[2]), *args])
    a = duckdb.connect(str(runs[1] / "features.duckdb"), read_only=True)
    b = duckdb.connect(str(runs[2] / "features.duckdb"), read_only=True)
    tables = [t for (t,) in a.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
    assert {"features", "examples", "neighbours", "contexts", "saes", "site_summary"} <= set(tables)
    for table in tables:
        volatile = "'created', 'stream_seconds', 'total_seconds', 'ranks', 'run', 'content_id'"  # differ by design
        query = f"SELECT * FROM meta WHERE key NOT IN ({volatile}) ORDER BY ALL" if table == "meta" else \
            f"SELECT * FROM {table} ORDER BY ALL"
        assert a.execute(query).fetchall() == b.execute(query).fetchall(), table
    assert not (runs[2] / ".precompute").exists()

    runs[3] = tmp_path / "ranks2-per-sae"  # each rank writes its own SAEs' files: the same store, split
    shutil.copytree(one_process, runs[3])
    torchrun(["precompute", str(runs[3]), *args, "--per-sae-files"])
    from sae_core.features.reader import FeatureStore

    with FeatureStore(runs[3]) as split:
        assert split.path == runs[3] / "features" and len(list(split.path.glob("*.duckdb"))) == len(split.saes())
        for table in ("features", "examples", "neighbours", "saes", "site_summary", "vocab"):
            query = f"SELECT * FROM {table} ORDER BY ALL"
            assert a.execute(query).fetchall() == split._rows(query), table
        used = "SELECT * FROM contexts WHERE context_id IN (SELECT context_id FROM examples) ORDER BY ALL"
        assert a.execute(used).fetchall() == split._rows(used)
    assert not (runs[3] / ".precompute").exists()


def test_two_rank_explain_matches_one_process(precomputed_run, tiny_model_dir, tmp_path):
    """Features dealt across two ranks get the same explanations and scores as in one process."""
    import shutil

    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"ranks{n}"
        shutil.copytree(precomputed_run, runs[n])
    args = ["--saes", "L0R,L1A", "--features", "3", "--explainer", str(tiny_model_dir), "--max-new-tokens", "5",
            "--score-examples", "3", "--score-window", "2", "--pool-contexts", "12", "--batch-size", "1", "--device", "cpu"]
    assert main(["explain", str(runs[1]), *args]) == 0
    torchrun(["explain", str(runs[2]), *args])
    query = "SELECT * EXCLUDE (created, details) FROM explanations ORDER BY sae_id, feature"
    a = duckdb.connect(str(runs[1] / "features.duckdb"), read_only=True).execute(query).df()
    b = duckdb.connect(str(runs[2] / "features.duckdb"), read_only=True).execute(query).df()
    assert len(a) == 6 and list(a.explanation) == list(b.explanation)
    for column in ("detection", "fuzzing", "detection_shuffled", "fuzzing_handle", "embedding", "embedding_handle"):
        assert a[column].fillna(-1).round(4).tolist() == b[column].fillna(-1).round(4).tolist(), column
    assert not (runs[2] / ".explain").exists()


def test_site_owners_and_batch_rules():
    assert site_owners(5, Parallel(rank=1, world=2), "sites") == [0, 1, 0, 1, 0]
    assert site_owners(3, Parallel(rank=0, world=2), "data") == [None] * 3
    assert site_owners(3, Parallel(), "sites") == [None] * 3  # one process trains everything
    with pytest.raises(UserError, match="at least one site per rank"):
        site_owners(1, Parallel(rank=0, world=2), "sites")
    with pytest.raises(UserError, match="--parallel"):
        site_owners(2, Parallel(), "layers")
    assert Parallel(rank=1, world=3).mine(list(range(7))) == [1, 4]


def test_auto_lm_batch_size_fits_half_the_free_memory():
    assert contexts_that_fit(free_bytes=10 * 2**30, per_context_bytes=2**28) == 20
    assert contexts_that_fit(free_bytes=2**20, per_context_bytes=2**30) == 1  # never zero
    assert contexts_that_fit(free_bytes=2**40, per_context_bytes=1) == 512  # capped


def test_three_ranks_and_a_resume_on_two_match_one_process(tiny_model_dir, tiny_corpus, tmp_path):
    """Uneven row counts per rank, leftovers split over three slices, then gathered and re-split for two ranks."""
    single, out = tmp_path / "single", tmp_path / "three-then-two"
    args = ["--batch-size", "258", "--no-eval"]  # divisible by 3 and by 2
    assert main(_train_args(tiny_model_dir, tiny_corpus, single, *args)) == 0
    torchrun(_train_args(tiny_model_dir, tiny_corpus, out, *args, "--stop-after", "1000"), n=3)
    assert json.loads((out / "run.json").read_text())["status"] == "training"
    torchrun(_train_args(tiny_model_dir, tiny_corpus, out, *args), n=2)
    a, b = _weights(single), _weights(out)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)


def test_a_data_parallel_transcoder_matches_one_process(tiny_model_dir, tiny_corpus, tmp_path):
    """A transcoder's rows (MLP input and output side by side, each scaled on its own) split over two ranks."""
    def args(out: Path, *extra: str) -> list[str]:
        listed = _train_args(tiny_model_dir, tiny_corpus, out, "--no-eval", *extra)
        listed[listed.index(SITES)] = "L1T"
        return listed

    assert main(args(tmp_path / "single")) == 0
    torchrun(args(tmp_path / "dp", "--parallel", "data"))
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "dp")
    assert a.keys() == b.keys() and all(k.startswith("blocks.1.ln2.hook_normalized/") for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)

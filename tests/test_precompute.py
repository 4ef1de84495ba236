"""Precompute on a tiny model: every statistic against brute force, resume, atomic replacement, import checks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import DEAD_FEATURE as DEAD
from helpers import PRECOMPUTE_OPTIONS, SITES, random_sae

from sae_core.errors import SAEFileError, SiteError
from sae_core.features import precompute as precompute_module
from sae_core.features.precompute import precompute_run
from sae_core.features.record import RecordWriter
from sae_core.features.schema import DB_FILE
from sae_core.loading import save_sae
from sae_core.model.hooks import run_to_sites
from sae_core.model.sites import parse_site
from sae_core.runs.import_saes import import_saes
from sae_core.text.corpus import iter_documents
from sae_core.text.tokens import special_token_ids, token_batches

OPTIONS = PRECOMPUTE_OPTIONS


@pytest.fixture(scope="module")
def built_run(precomputed_run, tmp_path_factory) -> Path:
    """A private copy of the shared precomputed run: these tests rebuild and break it."""
    copy = tmp_path_factory.mktemp("runs") / "imported"
    shutil.copytree(precomputed_run, copy)
    return copy


@pytest.fixture(scope="module")
def sae_folders(published_saes) -> list[Path]:
    return published_saes


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded


def brute_force(loaded, run_path: Path, tiny_corpus: Path, tokens: int):
    """Dense activations of every SAE on the same contexts, and the counted-token mask."""
    from sae_core.loading import load_sae

    docs = iter_documents(str(tiny_corpus), "eval")
    ids, acts, counted = [], {s: [] for s in SITES}, []
    seen = 0
    saes = {s: load_sae(run_path / "saes" / parse_site(s).hook_name) for s in SITES}
    for batch in token_batches(docs, loaded.tokenizer, 32, 8):
        if seen >= tokens:
            break
        out = run_to_sites(loaded.model, batch.input_ids, batch.attention_mask, sites=[parse_site(s) for s in SITES], layout=loaded.layout)
        for s in SITES:
            acts[s].append(saes[s].encode(out[parse_site(s)]) * batch.real[..., None])
        ids.append(batch.input_ids)
        counted.append(batch.real)
        seen += int(batch.real.sum())
    return torch.cat(ids), {s: torch.cat(a) for s, a in acts.items()}, torch.cat(counted)


def query(run: Path, sql: str, params=()):
    with duckdb.connect(str(run / DB_FILE), read_only=True) as con:
        return con.execute(sql, list(params)).df()


def test_statistics_match_brute_force(built_run, loaded, tiny_corpus):
    ids, dense, counted = brute_force(loaded, built_run, tiny_corpus, OPTIONS.tokens)
    saes = query(built_run, "SELECT sae_id, short_name, n_tokens FROM saes ORDER BY sae_id")
    assert sorted(saes.short_name) == sorted(SITES)
    contexts = query(built_run, "SELECT token_ids FROM contexts ORDER BY context_id")
    assert torch.equal(torch.from_numpy(np.stack(contexts.token_ids.tolist())), ids.int())
    for sae_id, short, n_tokens in saes.itertuples(index=False):
        a = dense[short]
        assert n_tokens == int(counted.sum())
        feats = query(built_run, "SELECT * FROM features WHERE sae_id = ? ORDER BY feature", [sae_id])
        fires = (a > 0).sum((0, 1))
        assert feats.fires.tolist() == fires.tolist()
        assert feats.density.tolist() == pytest.approx((fires / counted.sum()).tolist())
        assert feats.max_act.tolist() == pytest.approx(a.amax((0, 1)).tolist(), rel=1e-5)
        assert [sum(h) for h in feats.hist_counts] == fires.tolist()
        assert feats.dead.tolist() == (fires == 0).tolist()
        ex = query(built_run, "SELECT * FROM examples WHERE sae_id = ? AND kind = 0 ORDER BY feature, rank", [sae_id])
        for f in range(a.shape[-1]):
            mine = ex[ex.feature == f]
            per_ctx = a[:, :, f].amax(1)
            expected = per_ctx[per_ctx > 0].sort(descending=True).values[: OPTIONS.n_top]
            assert mine.activation.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
            for row in mine.itertuples():
                window = a[row.context_id, row.window_start : row.window_start + len(row.acts), f]
                assert list(row.acts) == pytest.approx(window.tolist(), rel=1e-5, abs=1e-6)
    assert query(built_run, "SELECT label FROM features WHERE sae_id = 0 AND feature = ?", [DEAD]).label[0].startswith("(dead")


def test_examples_never_sit_on_special_tokens_or_position_zero(built_run, loaded):
    specials = set(special_token_ids(loaded.tokenizer))
    rows = query(built_run, "SELECT e.position, c.token_ids[e.position + 1] AS token FROM examples e JOIN contexts c USING (context_id)")
    assert len(rows) > 0
    assert (rows.position > 0).all()
    assert not set(rows.token) & specials


def test_neighbours_and_summaries_are_stored(built_run):
    nb = query(built_run, "SELECT kind, count(*) AS n FROM neighbours GROUP BY kind ORDER BY kind")
    assert nb.n.tolist() == [48 * len(SITES), 48 * len(SITES)]
    summary = query(built_run, "SELECT short_name, alive, d_sae FROM site_summary ORDER BY sae_id")
    assert summary.set_index("short_name").loc["L0R", "alive"] <= 47


def test_interrupted_build_keeps_the_previous_file(built_run, loaded, monkeypatch):
    db = built_run / DB_FILE
    before = db.read_bytes()
    real = precompute_module._sae_rows
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first SAE is already in the file being built
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(precompute_module, "_sae_rows", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        precompute_run(built_run, OPTIONS, loaded=loaded, log=lambda m: None)
    assert db.read_bytes() == before
    assert not list(built_run.glob("*.building*"))


def test_a_killed_build_leftover_is_removed_and_the_build_completes(built_run, loaded):
    leftover = built_run / (DB_FILE + ".building")
    leftover.write_bytes(b"half a database")
    precompute_run(built_run, OPTIONS, loaded=loaded, log=lambda m: None)
    assert not leftover.exists()
    assert len(query(built_run, "SELECT * FROM saes")) == len(SITES)


def test_resumed_precompute_equals_uninterrupted(built_run, loaded, monkeypatch, tmp_path):
    reference = query(built_run, "SELECT * FROM examples ORDER BY sae_id, feature, kind, rank")
    flushes = []
    real_flush = RecordWriter.flush

    def dying_flush(self):
        if self._batches:
            flushes.append(1)
            if len(flushes) == 2:
                raise KeyboardInterrupt
        real_flush(self)

    monkeypatch.setattr(RecordWriter, "flush", dying_flush)
    (built_run / DB_FILE).unlink()
    with pytest.raises(KeyboardInterrupt):
        precompute_run(built_run, OPTIONS, loaded=loaded, log=lambda m: None)
    assert not (built_run / DB_FILE).exists()
    monkeypatch.setattr(RecordWriter, "flush", real_flush)
    messages = []
    precompute_run(built_run, OPTIONS, loaded=loaded, log=messages.append)
    assert any("resuming after" in m for m in messages)
    resumed = query(built_run, "SELECT * FROM examples ORDER BY sae_id, feature, kind, rank")
    assert reference.drop(columns="acts").equals(resumed.drop(columns="acts"))
    assert [list(a) for a in reference.acts] == [list(a) for a in resumed.acts]
    assert not (built_run / ".precompute").exists()


def test_import_refuses_an_sae_that_does_not_fit(tmp_path, loaded):
    narrow = tmp_path / "narrow"
    save_sae(random_sae("L0R", "topk", d_in=32), narrow)
    with pytest.raises(SAEFileError, match="d_in 32 does not match the model's width 64"):
        import_saes([narrow], tmp_path / "run", loaded, model=None, log=lambda m: None)
    deep = tmp_path / "deep"
    save_sae(random_sae("L7R", "topk"), deep)
    with pytest.raises(SiteError, match="L7R is out of range"):
        import_saes([deep], tmp_path / "run", loaded, model=None, log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_import_refuses_two_saes_of_one_site(tmp_path, loaded, sae_folders):
    with pytest.raises(SAEFileError, match="one SAE per site"):
        import_saes([sae_folders[0], sae_folders[0]], tmp_path / "run", loaded, model=None, log=lambda m: None)


def test_import_of_a_sparsify_folder_precomputes_like_any_run(tmp_path, loaded, tiny_corpus):
    sparsify = pytest.importorskip("sparsify") if os.environ.get("CI") != "true" else __import__("sparsify")
    coder = sparsify.SparseCoder(64, sparsify.SparseCoderConfig(num_latents=32, k=4))
    coder.save_to_disk(tmp_path / "layers.1.mlp")  # sparsify names the folder after its hookpoint
    run = import_saes([tmp_path / "layers.1.mlp"], tmp_path / "run", loaded, model=None, corpus=str(tiny_corpus),
                      context_size=32, log=lambda m: None)
    assert (run.path / "saes" / "blocks.1.hook_mlp_out" / "sae_weights.safetensors").is_file()
    precompute_run(run.path, OPTIONS, loaded=loaded, log=lambda m: None)
    features = query(run.path, "SELECT count(*) AS n, sum(fires) AS fires FROM features")
    assert features.n[0] == 32 and features.fires[0] > 0
    assert query(run.path, "SELECT short_name, architecture FROM saes").values.tolist() == [["L1M", "topk"]]


def test_a_corpus_without_held_out_text_is_a_clear_error(built_run, loaded, tmp_path):
    from dataclasses import replace

    from sae_core.errors import UserError

    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        precompute_run(built_run, replace(OPTIONS, corpus=str(empty)), loaded=loaded, log=lambda m: None)
    assert not (built_run / ".precompute").exists()
    assert (built_run / DB_FILE).is_file()  # the earlier file is untouched


def test_a_sample_of_the_run_saes_is_precomputed_on_request(precomputed_run, loaded, tmp_path):
    from dataclasses import replace

    from sae_core.errors import UserError
    from sae_core.features.reader import FeatureStore

    run = tmp_path / "sample"
    shutil.copytree(precomputed_run, run)
    precompute_run(run, replace(OPTIONS, saes="L*/2R,L1M", embed=False), loaded=loaded, log=lambda m: None)
    with FeatureStore(run) as store:  # L*/2R: every second layer of 2, i.e. layer 0
        assert sorted(store.saes().short_name) == ["L0R", "L1M"]
    with pytest.raises(UserError, match="no SAE at L0M.*its SAEs are at L0R, L1A, L1T, L1M"):
        precompute_run(run, replace(OPTIONS, saes="L0M"), loaded=loaded, log=lambda m: None)


def test_per_sae_files_from_separate_runs_make_the_store_of_one_build(precomputed_run, loaded, tmp_path):
    """Two precomputes of different SAEs (as on two machines) write one file per SAE; read together they hold what
    one build of all SAEs holds, under the same SAE ids."""
    from dataclasses import replace

    from sae_core.errors import UserError
    from sae_core.features.reader import FeatureStore

    run = tmp_path / "per-sae"
    shutil.copytree(precomputed_run, run)
    (run / DB_FILE).unlink()
    for saes in ("L1A", "L0R,L1M,L1T"):
        precompute_run(run, replace(OPTIONS, saes=saes, per_sae_files=True, embed=False), loaded=loaded, log=lambda m: None)
    assert sorted(p.name for p in (run / "features").glob("*.duckdb")) == ["L0R.duckdb", "L1A.duckdb", "L1M.duckdb", "L1T.duckdb"]
    with FeatureStore(run) as split, FeatureStore(precomputed_run) as one:
        assert split.search_index_problem is None
        for table in ("features", "examples", "neighbours", "saes", "site_summary"):
            sql = f"SELECT * EXCLUDE (folder) FROM {table} ORDER BY ALL" if table == "saes" else f"SELECT * FROM {table} ORDER BY ALL"
            assert one._rows(sql) == split._rows(sql), table
        page_a, page_b = one.feature("L1M", 3), split.feature("L1M", 3)
        pd.testing.assert_frame_equal(page_a.examples, page_b.examples)
    with pytest.raises(UserError, match="one file per SAE; precompute with --per-sae-files"):
        precompute_run(run, replace(OPTIONS, embed=False), loaded=loaded, log=lambda m: None)

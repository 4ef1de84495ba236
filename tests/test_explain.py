"""`sae-explorer explain` end to end: known answers on a constructed feature, a tiny random explainer and scorer,
resuming after a kill, a remote server that fails midway, and the feature file kept whole."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from helpers import SITES, make_text
from stand_ins import TOKEN, CannedExplainer, KeywordScorer
from test_openai_client import StubServer, completion

from sae_core.cli import main
from sae_core.errors import UserError
from sae_core.features.precompute import PrecomputeOptions, precompute_run
from sae_core.features.reader import FeatureStore
from sae_core.features.schema import DB_FILE
from sae_core.interp import explain as explain_module
from sae_core.interp.config import ExplainConfig
from sae_core.interp.explain import explain_run
from sae_core.interp.journal import WORK_DIR
from sae_core.interp.openai_client import RemoteModelError
from sae_core.interp.semantic_search import search_by_meaning
from sae_core.loading import save_sae
from sae_core.model.hooks import run_to_sites
from sae_core.model.load import load_model
from sae_core.model.sentence_embedder import load_embedder
from sae_core.model.sites import parse_site
from sae_core.runs.import_saes import import_saes
from sae_core.saes import SAEConfig, create_sae
from sae_core.text.corpus import iter_documents
from sae_core.text.tokens import token_batches

OPTIONS = ExplainConfig(features="0,1,2,3", explain_examples=4, score_examples=4, explain_window=4, score_window=3,
                        batch_size=2, pool_contexts=24, device="cpu")


@pytest.fixture(scope="module")
def river_loaded(tiny_model_dir):
    """The tiny model loaded for this module alone: the constructed feature must see activations no other test's hooks touch."""
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def river_run(tmp_path_factory, river_loaded, tiny_model_dir) -> Path:
    """A run with one SAE at L0R whose feature 0 is a linear read-out of the token "iv" (fires on it, nowhere else)."""
    loaded = river_loaded
    root = tmp_path_factory.mktemp("river")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(make_text(400, seed=3)), encoding="utf-8")
    tok = loaded.tokenizer
    site = parse_site("L0R")
    xs, ids = [], []
    for batch in token_batches(iter_documents(str(corpus), "all"), tok, 32, 8):
        x = run_to_sites(loaded.model, batch.input_ids, batch.attention_mask, sites=[site], layout=loaded.layout)[site]
        xs.append(x[batch.real])
        ids.append(batch.input_ids[batch.real])
    x, ids = torch.cat(xs), torch.cat(ids)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())
    assert hooks == 0, f"{hooks} hooks left on the model"
    X = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    for token in CANDIDATES:  # the first token a linear read-out separates exactly (in practice the first)
        on = ids == tok.convert_tokens_to_ids(token)
        w = torch.linalg.lstsq(X, on.double()[:, None]).solution[:, 0]
        score = X @ w
        if on.any() and score[on].min() > score[~on].max():
            break
    else:
        raise AssertionError(f"no read-out of {CANDIDATES} separates its token at L0R")
    (root / "token.txt").write_text(tok.convert_tokens_to_string([token]).strip())
    cut = float(score[on].min() + score[~on].max()) / 2
    w = w.float()
    g = torch.Generator().manual_seed(0)
    d_sae = 8
    W_enc = torch.randn(64, d_sae, generator=g) / 4
    b_enc = torch.zeros(d_sae)
    W_enc[:, 0], b_enc[0] = w[:-1] * 10, (w[-1] - cut) * 10
    cfg = SAEConfig(architecture="standard", d_in=64, d_sae=d_sae, hook_name=site.hook_name)
    sae = create_sae(cfg).load_tensors({"W_enc": W_enc, "b_enc": b_enc, "b_dec": torch.zeros(64),
                                        "W_dec": torch.nn.functional.normalize(torch.randn(d_sae, 64, generator=g), dim=-1)})
    save_sae(sae, root / "saes" / site.hook_name)
    run = import_saes([root / "saes" / site.hook_name], root / "run", loaded, model=str(tiny_model_dir), corpus=str(corpus),
                      context_size=32, log=lambda m: None)
    precompute_run(run.path, PrecomputeOptions(tokens=6_000, window=6, n_top=8, n_intervals=4, per_interval=2, shard_tokens=2_000,
                                               device="cpu"), loaded=loaded, log=lambda m: None)
    return run.path


CANDIDATES = (TOKEN, "Ġocean", "Ġtoken", "arse", "ick")
"""Tokens of the tiny tokenizer that each occur in one word of the test corpus only."""


@pytest.fixture(scope="module")
def river_token(river_run) -> str:
    """The token the constructed feature fires on."""
    return (river_run.parent / "token.txt").read_text()


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _rows(run: Path) -> dict[int, dict]:
    with FeatureStore(run) as store:
        return {int(f): store.explanations(0, int(f)).iloc[0].to_dict() for f in range(4) if not store.explanations(0, f).empty}


def test_an_explanation_that_names_the_token_scores_high_and_a_shuffled_one_near_chance(river_run, river_token, tmp_path):
    run = _copy(river_run, tmp_path)
    with FeatureStore(run) as store:
        tokens = store.vocab
        page = store.feature("L0R", 0)
        assert river_token in {tokens[t].strip() for t in page.examples.token_ids.explode().tolist()}
    summary = explain_run(run, OPTIONS, explainer=CannedExplainer(token=river_token), scorer=KeywordScorer(), log=lambda m: None)
    assert summary.explained == 4
    rows = _rows(run)
    river = rows[0]
    assert river["explanation"] == f'The token "{river_token}" of the corpus.'
    assert river["detection"] == 1.0 and river["fuzzing"] == 1.0
    assert river["detection_shuffled"] == 0.5 and river["fuzzing_shuffled"] == 0.5  # "zzz" fires on nothing: chance
    assert river["n_activating"] >= 2 and river["n_non_activating"] == river["n_activating"]
    assert 0 <= river["embedding"] <= 1  # its known-answer test is the next one, on real sentences
    details = river["details"]
    assert details["texts"]["shuffled"] == 'The token "zzz".' and details["shuffled_from"][0] == "L0R"
    # the scorer never saw a context the explainer saw
    with FeatureStore(run) as store:
        examples = store.feature("L0R", 0).examples
    held_out = {c["context_id"] for c in details["contexts"] if c["kind"] >= 0}
    shown_side = set(examples[examples["rank"] % 2 == 0].context_id) - set(examples[examples["rank"] % 2 == 1].context_id)
    assert not held_out & shown_side
    # the non-activating contexts really do not hold the token
    assert all(c["kind"] == -1 for c in details["contexts"][river["n_activating"]:])
    for feature, row in rows.items():
        if feature:
            assert row["detection"] in (0.5, None) or np.isnan(row["detection"])


def test_the_embedding_score_ranks_contexts_about_the_explanation_first():
    from sae_core.interp.samples import NON_ACTIVATING, Context
    from sae_core.interp.score_features import ScoringItem, score_batch

    def ctx(text, kind):
        return Context(text.split(" "), [1.0] * len(text.split(" ")), kind, hash(text) % 1000)

    contexts = [ctx("the river flows past the bank", 1), ctx("boats on the wide river today", 2),
                ctx("market prices rose again this quarter", NON_ACTIVATING), ctx("the doctor wrote a prescription", NON_ACTIVATING)]
    item = ScoringItem(("L0R", 0), {"explanation": "rivers and water", "shuffled": "financial markets", "handle": None}, contexts)
    [result] = score_batch([item], KeywordScorer(), load_embedder())
    assert result["scores"]["embedding"] == 1.0 and result["scores"]["embedding_shuffled"] <= 0.5


def test_a_tiny_random_explainer_and_scorer_drive_the_whole_pipeline(precomputed_run, tmp_path, tiny_model_dir, capsys):
    run = _copy(precomputed_run, tmp_path)
    before = _table_hashes(run)
    args = ["explain", str(run), "--features", "2", "--explainer", str(tiny_model_dir), "--max-new-tokens", "6",
            "--score-examples", "3", "--pool-contexts", "16", "--batch-size", "3", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "detection" in out and "token handle" in out
    with FeatureStore(run) as store:
        df = store._df("SELECT * FROM explanations")
        assert len(df) == 2 * len(SITES) and set(df.explainer) == {str(tiny_model_dir)} and set(df.scorer) == {str(tiny_model_dir)}
        assert df[["detection", "fuzzing", "embedding"]].notna().any().all()
        listed = store.list_features(explained_only=True, sort_by="detection", limit=100)
        assert len(listed) == 2 * len(SITES) and listed.explanation.notna().all()
        assert len(store._df("SELECT * FROM feature_vectors WHERE source = 'explanation'")) == int((df.explanation != "").sum())
    assert _table_hashes(run) == before  # every statistic kept
    assert not (run / WORK_DIR).exists()
    assert main(args) == 0  # nothing left to do: already explained by these models
    assert "already explained" in capsys.readouterr().err


def _table_hashes(run: Path) -> dict[str, str]:
    with duckdb.connect(str(run / DB_FILE), read_only=True) as con:
        return {t: hashlib.sha1(con.execute(f"SELECT * FROM {t} ORDER BY ALL").df().to_csv().encode()).hexdigest()
                for t in ("features", "examples", "neighbours", "saes", "contexts", "site_summary")}


def test_a_killed_job_resumes_and_does_nothing_twice(river_run, river_token, tmp_path):
    run = _copy(river_run, tmp_path)
    first = CannedExplainer(fail_after=2, token=river_token)  # killed in its second batch
    with pytest.raises(KeyboardInterrupt):
        explain_run(run, OPTIONS, explainer=first, scorer=KeywordScorer(), log=lambda m: None)
    assert len(first.asked) == 2 and any((run / WORK_DIR).rglob("rank-*.jsonl"))
    assert _rows(run) == {}  # nothing half-written into the feature file

    class KilledScorer(KeywordScorer):
        calls = 0

        def yes_probabilities(self, groups):
            KilledScorer.calls += 1
            if KilledScorer.calls == 2:
                raise KeyboardInterrupt
            return super().yes_probabilities(groups)

    second = CannedExplainer(token=river_token)
    with pytest.raises(KeyboardInterrupt):
        explain_run(run, OPTIONS, explainer=second, scorer=KilledScorer(), log=lambda m: None)
    assert len(second.asked) == 2  # only the two features the first job had not explained

    third = CannedExplainer(token=river_token)
    scorer = KeywordScorer()
    asked = []
    original = scorer.yes_probabilities
    scorer.yes_probabilities = lambda groups: asked.append(len(groups)) or original(groups)
    explain_run(run, OPTIONS, explainer=third, scorer=scorer, log=lambda m: None)
    assert third.asked == [] and sum(asked) == 2 * 3 * 2  # two features left to score: 3 texts × 2 tasks each
    rows = _rows(run)
    assert sorted(rows) == [0, 1, 2, 3] and rows[0]["detection"] == 1.0
    assert not (run / WORK_DIR).exists()


def test_a_failing_server_keeps_the_work_done_and_a_rerun_finishes(river_run, river_token, tmp_path):
    run = _copy(river_run, tmp_path)
    state = {"fail": True, "generated": 0}

    def reply(body):
        if body["max_tokens"] == 1:  # scoring
            return 200, completion("Yes", {"Yes": -0.1, "No": -2.0})
        state["generated"] += 1
        if state["fail"] and state["generated"] > 2:
            return 500, b"GPU fell off the bus"
        return 200, completion('The token "zzz".')

    server = StubServer(reply)
    try:
        cfg = ExplainConfig(**{**OPTIONS.__dict__, "explainer_url": server.url, "concurrency": 1})
        with pytest.raises(RemoteModelError, match="HTTP 500"):
            explain_run(run, cfg, log=lambda m: None)
        assert state["generated"] > 2  # two done, then failures (each retried twice)
        state.update(fail=False, generated=0)
        summary = explain_run(run, cfg, log=lambda m: None)
        assert state["generated"] == 2 and summary.explained == 4 and summary.explainer == f"stub-model@{server.url}"
    finally:
        server.close()
    assert sorted(_rows(run)) == [0, 1, 2, 3]


def test_a_failed_store_leaves_the_feature_file_untouched(river_run, river_token, tmp_path, monkeypatch):
    run = _copy(river_run, tmp_path)
    digest = hashlib.sha1((run / DB_FILE).read_bytes()).hexdigest()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(explain_module, "embed_explanations", broken)
    with pytest.raises(OSError, match="disk full"):
        explain_run(run, OPTIONS, explainer=CannedExplainer(token=river_token), scorer=KeywordScorer(), log=lambda m: None)
    assert hashlib.sha1((run / DB_FILE).read_bytes()).hexdigest() == digest
    assert not list(run.glob("*.amending*"))
    monkeypatch.undo()
    again = CannedExplainer(token=river_token)
    explain_run(run, OPTIONS, explainer=again, scorer=KeywordScorer(), log=lambda m: None)
    assert again.asked == []  # the journal survived the failed store


def test_search_by_meaning_finds_the_river_feature(river_run, river_token, tmp_path):
    run = _copy(river_run, tmp_path)
    explain_run(run, OPTIONS, explainer=CannedExplainer(token=river_token), scorer=KeywordScorer(), log=lambda m: None)
    embedder = load_embedder()
    with FeatureStore(run) as store:
        hits = search_by_meaning(store, embedder, "rivers and streams")
        assert (hits.sae[0], hits.feature[0]) == ("L0R", 0)
        similar = store.similar_features("L0R", 1, limit=3)
        assert 1 not in set(similar.feature) and len(similar) == 3
        with pytest.raises(UserError, match="query is empty"):
            search_by_meaning(store, embedder, "   ")
    with duckdb.connect(str(run / DB_FILE)) as con:
        con.execute("DELETE FROM feature_vectors")
        con.execute("DELETE FROM meta WHERE key = 'embedder'")
    with FeatureStore(run) as store, pytest.raises(UserError, match="no feature vectors yet.*sae-explorer embed"):
        search_by_meaning(store, embedder, "rivers")


def test_feature_selection(river_run):
    from sae_core.interp.select import select_features

    with FeatureStore(river_run) as store:
        live = store.live_features("L0R")
        assert select_features(store, None, "all")[0] == [("L0R", f) for f in sorted(live)]
        picked, _ = select_features(store, "L0R", "2")
        assert len(picked) == 2
        assert select_features(store, None, "L0R:0,3")[0] == [("L0R", 0), ("L0R", 3)]
        with pytest.raises(UserError, match="has no feature 99"):
            select_features(store, None, "99,")
        with pytest.raises(UserError, match="cannot read"):
            select_features(store, None, "rivers")
        with pytest.raises(UserError, match="no SAE"):
            select_features(store, "L9R", "all")


def test_explain_options_are_checked():
    with pytest.raises(UserError, match="score-examples must be at least 1"):
        ExplainConfig(score_examples=0)
    assert json.dumps(ExplainConfig().fingerprint())


def test_a_second_explainer_adds_a_row_and_becomes_current(river_run, river_token, tmp_path):
    run = _copy(river_run, tmp_path)
    cfg = ExplainConfig(**{**OPTIONS.__dict__, "features": "0,"})
    explain_run(run, cfg, explainer=CannedExplainer(token=river_token), scorer=KeywordScorer(), log=lambda m: None)

    class Other(CannedExplainer):
        name = "other-explainer"

    explain_run(run, cfg, explainer=Other(other="x", token=river_token), scorer=KeywordScorer(), log=lambda m: None)
    explain_run(run, ExplainConfig(**{**cfg.__dict__, "overwrite": True}), explainer=Other(token=river_token), scorer=KeywordScorer(),
                log=lambda m: None)  # the same models again: replaced, not added
    with FeatureStore(run) as store:
        rows = store.explanations(0, 0)
        assert list(rows.explainer) == ["other-explainer", "canned-explainer"]
        current = store._df("SELECT explainer FROM explanations WHERE current")
        assert list(current.explainer) == ["other-explainer"]
        assert store.list_features(explained_only=True).shape[0] == 1


def test_a_new_precompute_keeps_the_explanations_of_unchanged_saes(river_run, river_token, tmp_path, river_loaded):
    import os

    run = _copy(river_run, tmp_path)
    explain_run(run, OPTIONS, explainer=CannedExplainer(token=river_token), scorer=KeywordScorer(), log=lambda m: None)
    before = _rows(run)
    options = PrecomputeOptions(tokens=4_000, window=6, n_top=8, n_intervals=4, per_interval=2, shard_tokens=2_000, device="cpu")
    logs = []
    precompute_run(run, options, loaded=river_loaded, log=logs.append)
    after = _rows(run)
    assert sorted(after) == sorted(before) and after[0]["explanation"] == before[0]["explanation"]
    assert any("kept 4 explanation(s)" in m for m in logs)
    with FeatureStore(run) as store:
        assert "explanation" in set(store._df("SELECT source FROM feature_vectors").source)
    weights = run / "saes" / "blocks.0.hook_resid_post" / "sae_weights.safetensors"
    os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime + 10))  # the SAE changed
    precompute_run(run, options, loaded=river_loaded, log=lambda m: None)
    assert _rows(run) == {}


"""Shared fixtures: a tiny saved model, a tiny corpus, published SAEs and precomputed, explained and refusal runs
(no network). Helpers the tests import live in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    DEAD_FEATURE,
    HOSTILE_EXPLANATION,
    PRECOMPUTE_OPTIONS,
    SITES,
    alternate_refusals,
    make_text,
    random_sae,
    write_prompt_files,
)

from sae_core.features.precompute import precompute_run
from sae_core.features.reader import FeatureStore
from sae_core.loading import save_sae
from sae_core.model.load import load_model
from sae_core.runs.import_saes import import_saes
from sae_core.saes import cpu_matmul
from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture
def choose_matmul(monkeypatch):
    """`choose_matmul("torch" | "numpy" | None)`: set `SAE_EXPLORER_MATMUL` (None unsets it) and forget the cached
    choice; numpy's path is taken at any block size, so tiny tests reach it."""
    monkeypatch.setattr(cpu_matmul, "MIN_BLOCK_ELEMENTS", 0)

    def choose(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(cpu_matmul.ENV, raising=False)
        else:
            monkeypatch.setenv(cpu_matmul.ENV, value)
        cpu_matmul.numpy_backend.cache_clear()

    yield choose
    cpu_matmul.numpy_backend.cache_clear()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer tiny Qwen3 with its tokenizer, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_model("qwen3", n_layers=2, d_model=64).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A .txt corpus of ~1,000 short documents separated by blank lines."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(make_text(1000)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def published_saes(tmp_path_factory) -> list[Path]:
    """SAELens folders of random SAEs at `SITES` of the tiny model, one with a dead feature."""
    root = tmp_path_factory.mktemp("published")
    folders = []
    for i, (site, arch) in enumerate(SITES.items()):
        sae = random_sae(site, arch, seed=i)
        if site == "L0R":
            sae.b_enc.data[DEAD_FEATURE] = -1e6
        folder = root / sae.cfg.hook_name
        save_sae(sae, folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    """The tiny model, loaded once."""
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def precomputed_run(tmp_path_factory, published_saes, tiny_loaded, tiny_model_dir, tiny_corpus) -> Path:
    """A run imported from `published_saes` with its features.duckdb (read-only for tests: copy it to modify)."""
    run = import_saes(published_saes, tmp_path_factory.mktemp("runs") / "imported", tiny_loaded,
                      model=str(tiny_model_dir), corpus=str(tiny_corpus), context_size=32, log=lambda m: None)
    precompute_run(run.path, PRECOMPUTE_OPTIONS, loaded=tiny_loaded, log=lambda m: None)
    return run.path


@pytest.fixture(scope="session")
def explained_run(tmp_path_factory, precomputed_run) -> Path:
    """A copy of the precomputed run with five L1A features explained (stand-in models, hostile text)."""
    import shutil

    from stand_ins import CannedExplainer, KeywordScorer

    from sae_core.interp.config import ExplainConfig
    from sae_core.interp.explain import explain_run

    run = tmp_path_factory.mktemp("explained") / "run"
    shutil.copytree(precomputed_run, run)
    # short scored windows: these random SAEs' features are dense, so long windows without a firing are rare
    cfg = ExplainConfig(saes="L1A", features="5", explain_examples=4, score_examples=3, score_window=2, pool_contexts=16,
                        device="cpu")
    explain_run(run, cfg, explainer=CannedExplainer(other=HOSTILE_EXPLANATION), scorer=KeywordScorer(), log=lambda m: None)
    return run


@pytest.fixture(scope="session")
def refusal_run(tmp_path_factory, precomputed_run, tiny_loaded) -> Path:
    """A copy of the precomputed run with a small refusal study (both contrasts) in RUN/refusal/."""
    import shutil

    from sae_core.refusal.study import StudyConfig, run_study_opened
    from sae_core.runs.open_run import open_run_saes

    run = tmp_path_factory.mktemp("refusal") / "run"
    shutil.copytree(precomputed_run, run)
    harmful, harmless = write_prompt_files(run.parent / "prompts")
    cfg = StudyConfig(harmful=str(harmful), harmless=str(harmless), alphas=[0.5, 2.0], steer_prompts=3, max_new_tokens=4,
                      batch_size=3, top=10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sae_core.refusal.study.judge_all", alternate_refusals)
        run_study_opened(run, cfg, open_run_saes(run, loaded=tiny_loaded, log=lambda m: None))
    return run


@pytest.fixture(scope="module")
def busiest(precomputed_run) -> tuple[str, int, str]:
    """The L1M feature that fires most in the precomputed run: (SAE, feature, label)."""
    with FeatureStore(precomputed_run) as store:
        row = store.list_features(saes=[store.sae_id("L1M")], sort_by="fires", limit=1).iloc[0]
        return row["sae"], int(row["feature"]), row["label"]

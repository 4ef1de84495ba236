"""A release's own statistics (`import-stats`): read by column name or --columns, stored beside ours marked with their
origin, replaced by a second import from the same origin, refused with one line when they do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sae_core.cli import main
from sae_core.features.reader import FeatureStore
from sae_core.features.release_stats import ReleaseStatsError, parse_columns, release_files
from sae_core.features.split import split_feature_file
from sae_core.testing.synthetic_features import build_synthetic

D_SAE = 200


@pytest.fixture
def run(tmp_path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text("{}")  # a run folder the app serves
    build_synthetic(folder / "features.duckdb", n_saes=2, d_sae=D_SAE, n_layers=2, vocab_size=300, n_contexts=8,
                    context_size=32)
    return folder


def write_release(folder: Path, *, metrics: pd.DataFrame | None = None, prompts: pd.DataFrame | None = None,
                  summary: dict | None = None) -> Path:
    """A reverse index laid out as a release ships it: reverse-index/NAME/{feature_metrics,feature_prompts}.parquet."""
    where = folder / "reverse-index" / "l1-merged"
    where.mkdir(parents=True)
    if metrics is not None:
        metrics.to_parquet(where / "feature_metrics.parquet")
    if prompts is not None:
        prompts.to_parquet(where / "feature_prompts.parquet")
    if summary is not None:
        (where / "summary.json").write_text(json.dumps(summary))
    return folder


def release_metrics(features=(3, 7, 11)) -> pd.DataFrame:
    n = len(features)
    return pd.DataFrame({"feature_id": list(features), "activation_count": [10 * (i + 1) for i in range(n)],
                         "activation_frequency": [1e-4 * (i + 1) for i in range(n)],
                         "max_activation": [5.0 + i for i in range(n)], "mean_activation": [1.5] * n,
                         "category": ["code", "math", "chat"][:n]})


def release_prompts() -> pd.DataFrame:
    return pd.DataFrame({"feature_id": [7, 7, 7, 3], "prompt": ["weak one", "strongest", "middle", "*bold* <b>x</b>"],
                         "activation": [1.0, 9.0, 4.0, 2.0], "token": [" a", " b", " c", " d"],
                         "conversation_id": ["c1", "c2", "c3", "c4"]})


def test_a_reverse_index_is_read_by_its_column_names_and_shown_beside_ours(run, tmp_path, capsys):
    source = write_release(tmp_path / "rel", metrics=release_metrics(), prompts=release_prompts(),
                           summary={"conversations": 978471, "records": 280280758})
    with FeatureStore(run) as store:
        ours = store.feature("L0M", 7).feature
    assert main(["import-stats", str(run), str(source), "--sae", "L0M", "--origin", "hf:org/release"]) == 0
    out = capsys.readouterr()
    assert "3 feature rows and 4 top prompts from hf:org/release" in out.out
    assert "fires ← activation_count" in out.err and "text ← prompt" in out.err
    with FeatureStore(run) as store:
        page = store.feature("L0M", 7)
        assert page.feature == ours  # our statistics are untouched
        stats = page.release.features.iloc[0]
        assert stats.origin == "hf:org/release" and stats.fires == 20 and stats.density == pytest.approx(2e-4)
        assert stats.max_act == 6.0 and stats.mean_act == 1.5
        assert stats.extra == {"category": "math"} and stats.summary == {"conversations": 978471, "records": 280280758}
        examples = page.release.examples
        assert list(examples.text) == ["strongest", "middle", "weak one"] and list(examples["rank"]) == [0, 1, 2]
        assert list(examples.token) == [" b", " c", " a"] and examples.extra.iloc[0] == {"conversation_id": "c2"}
        assert store.feature("L0M", 5).release.empty and store.feature("L0R", 7).release.empty  # other features, SAEs
        sources = store.release_sources()
        assert list(sources.sae) == ["L0M"] and sources.column_map.iloc[0]["feature_metrics.parquet"]["density"] == "activation_frequency"


def test_importing_again_from_one_origin_replaces_it_and_another_origin_adds_to_it(run, tmp_path):
    first = write_release(tmp_path / "a", metrics=release_metrics(), prompts=release_prompts())
    second = write_release(tmp_path / "b", metrics=release_metrics(features=(7, 9)))
    for _ in range(2):
        main(["import-stats", str(run), str(first), "--sae", "L0R", "--origin", "one"])
    main(["import-stats", str(run), str(second), "--sae", "L0R", "--origin", "two"])
    with FeatureStore(run) as store:
        release = store.feature("L0R", 7).release
        assert list(release.features.origin) == ["one", "two"] and len(release.examples) == 3
        assert len(store._df("SELECT * FROM release_features WHERE origin = 'one'")) == 3


def test_columns_named_otherwise_are_read_with_the_columns_option(run, tmp_path, capsys):
    metrics = pd.DataFrame({"latent_idx": [1, 2], "act_rate": [0.01, 0.02]})
    prompts = pd.DataFrame({"latent_idx": [1, 1], "preview": ["x", "y"], "strength": [1.0, 3.0]})
    source = write_release(tmp_path / "rel", metrics=metrics, prompts=prompts)
    assert main(["import-stats", str(run), str(source), "--sae", "L0R"]) == 2
    assert "has a feature-id column but none of the statistics" in capsys.readouterr().err
    main(["import-stats", str(run), str(source), "--sae", "L0R",
          "--columns", "density=act_rate,text=preview,activation=strength"])
    with FeatureStore(run) as store:
        release = store.feature("L0R", 1).release
    assert release.features.density.iloc[0] == 0.01 and list(release.examples.text) == ["y", "x"]


@pytest.mark.parametrize("metrics, message", [
    (pd.DataFrame({"id": [1], "density": [0.1]}), "has no feature-id column .* it has id, density: name it with --columns feature="),
    (pd.DataFrame({"feature": [1, D_SAE], "density": [0.1, 0.2]}), f"feature {D_SAE} is outside the SAE's 0 … {D_SAE - 1}"),
    (pd.DataFrame({"feature": [1, 1], "density": [0.1, 0.2]}), "feature 1 has more than one row"),
    (pd.DataFrame({"feature": [1], "density": [12.5]}), "goes outside 0 … 1, so it is not a fraction"),
    (pd.DataFrame({"feature": [1.5], "density": [0.1]}), "is not a whole number in every row"),
])
def test_statistics_that_do_not_fit_are_refused_with_one_line_and_nothing_is_written(run, tmp_path, capsys, metrics, message):
    source = write_release(tmp_path / "rel", metrics=metrics)
    before = (run / "features.duckdb").read_bytes()
    assert main(["import-stats", str(run), str(source), "--sae", "L0R"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and pd.Series(errors).str.contains(message).all(), errors
    assert (run / "features.duckdb").read_bytes() == before


def test_unreadable_sources_and_options_say_what_is_wrong(run, tmp_path):
    from sae_core.features.release_stats import find_release_files, import_release_stats

    with pytest.raises(ReleaseStatsError, match="no release statistics: looked for feature_metrics.parquet"):
        find_release_files(tmp_path)
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "feature_metrics.parquet").write_bytes(b"PAR1 truncated")
    files = find_release_files(tmp_path / "stats")
    with pytest.raises(ReleaseStatsError, match="cannot read .*feature_metrics.parquet as Parquet"):
        import_release_stats(run, "L0R", files, "x")
    with pytest.raises(ReleaseStatsError, match="no role 'dens'; the roles are"):
        parse_columns("dens=x")
    with pytest.raises(ReleaseStatsError, match="takes ROLE=COLUMN pairs"):
        parse_columns("density")
    source = write_release(tmp_path / "rel", metrics=release_metrics())
    with pytest.raises(ReleaseStatsError, match="--columns text=nothing: no statistics file has that column"):
        import_release_stats(run, "L0R", find_release_files(source), "x", columns={"text": "nothing"})
    with pytest.raises(Exception, match="no SAE 'L9R'"):
        import_release_stats(run, "L9R", find_release_files(source), "x")
    with pytest.raises(ReleaseStatsError, match="missing.parquet is not a file"):
        release_files(str(source), metrics=str(tmp_path / "missing.parquet"))


def test_files_named_otherwise_are_given_with_metrics_and_prompts(run, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    release_metrics().to_parquet(folder / "stats_v2.parquet")
    release_prompts().to_parquet(folder / "tops.parquet")
    (folder / "summary.json").write_text('{"tokens": 5}')
    with pytest.raises(ReleaseStatsError, match="it has stats_v2.parquet, tops.parquet: name them with --metrics / --prompts"):
        release_files(str(folder))
    main(["import-stats", str(run), str(folder), "--sae", "L0R", "--metrics", str(folder / "stats_v2.parquet"),
          "--prompts", str(folder / "tops.parquet")])
    with FeatureStore(run) as store:
        release = store.feature("L0R", 7).release
    assert release.features.summary.iloc[0] == {"tokens": 5} and len(release.examples) == 3


def test_a_split_store_gets_the_statistics_in_the_sae_s_own_part(run, tmp_path):
    split_feature_file(run / "features.duckdb")
    other = run / "features" / "L0R.duckdb"
    untouched = (other.read_bytes(), other.stat().st_mtime_ns)
    source = write_release(tmp_path / "rel", metrics=release_metrics(), prompts=release_prompts())
    main(["import-stats", str(run), str(source), "--sae", "L0M"])
    assert (other.read_bytes(), other.stat().st_mtime_ns) == untouched  # only the SAE's own part is rewritten
    with FeatureStore(run) as store:
        assert store.feature("L0M", 7).release.features.fires.iloc[0] == 20
        assert store.feature("L0R", 7).release.empty
        assert len(store.release_sources()) == 1


def test_the_feature_page_shows_the_release_beside_this_run(run, tmp_path, monkeypatch):
    from tests.helpers import app_page

    source = write_release(tmp_path / "rel", metrics=release_metrics(), prompts=release_prompts(), summary={"n": 1})
    main(["import-stats", str(run), str(source), "--sae", "L0M", "--origin", "hf:org/release"])
    at = app_page(monkeypatch, "2_Features.py", run, sae="L0M", feature="3").run()
    assert not at.exception
    table = next(df.value for df in at.dataframe if "source" in df.value.columns)
    assert list(table.source.str.startswith(("this run", "release: hf:org/release"))) == [True, True]
    assert table.fires.iloc[1] == 10
    prompts = next(df.value for df in at.dataframe if "text" in df.value.columns)
    assert list(prompts.text) == ["*bold* <b>x</b>"]  # a table cell: shown as text, never as markup
    assert any("release's top prompts (1) · hf:org/release" in e.label for e in at.expander)

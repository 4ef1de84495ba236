"""The Features page (Streamlit AppTest) on the precomputed tiny run, and the explorer.feature_view helpers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import app_page
from streamlit.testing.v1 import AppTest

from explorer.feature_view import LINK_PARAMS, escape_markdown, example_groups, feature_link, shade_tokens_html
from sae_core.features.reader import FeatureStore


def _page(monkeypatch, run: Path, **params) -> AppTest:
    return app_page(monkeypatch, "2_Features.py", run, **params).run()


def test_shaded_tokens_escape_html_and_show_values():
    out = shade_tokens_html(["<b>", " x"], [2.0, 0.0], scale=2.0, focus=0)
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "rgba(255,140,0,1.00)" in out and "rgba(255,140,0,0.00)" in out and ": 2.000" in out
    assert feature_link("L1M", 7) == "Features?sae=L1M&feature=7"
    token = LINK_PARAMS.set((("run", "demo"), ("token", "a&b")))  # what a page run of a served run carries
    assert feature_link("L1M", 7, page="Prompt") == "Prompt?sae=L1M&feature=7&run=demo&token=a%26b"
    LINK_PARAMS.reset(token)
    assert escape_markdown('"a*" → [x](y) $1') == '"a\\*" → \\[x\\]\\(y\\) \\$1'


def test_list_shows_features_with_links(monkeypatch, precomputed_run):
    at = _page(monkeypatch, precomputed_run)
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) > 0 and all(link.startswith("Features?sae=") for link in table["feature"])
    assert set(table["sae"]) <= {"L0R", "L1A", "L1M", "L1T"}


def test_label_search_finds_a_known_feature(monkeypatch, precomputed_run, busiest):
    sae, feature, label = busiest
    at = _page(monkeypatch, precomputed_run)
    at.radio[0].set_value("label or explanation").run()
    at.text_input[0].set_value(label).run()
    assert not at.exception
    links = list(at.dataframe[0].value["feature"])
    assert f"{feature_link(sae, feature)}&run={precomputed_run.name}" in links


def test_feature_deep_link_renders_the_whole_page(monkeypatch, precomputed_run, busiest):
    sae, feature, label = busiest
    at = _page(monkeypatch, precomputed_run, sae=sae, feature=str(feature))
    assert not at.exception
    assert at.subheader[0].value == f"{sae} · feature {feature}"
    assert any(escape_markdown(label) in m.value for m in at.markdown)
    assert len(at.expander) >= 2  # top activations + at least one interval
    assert len(at.dataframe) == 3  # two neighbour lists, features like this one
    with FeatureStore(precomputed_run) as store:
        page = store.feature(sae, feature)
    for frame, title in ((page.top_logits, "promoted tokens"), (page.bottom_logits, "suppressed tokens")):
        drawn = next(m.value for m in at.markdown if f'aria-label="{title}"' in m.value)
        assert f"{frame['value'].iloc[0]:.3f}" in drawn and drawn.count("<tr>") == len(frame) + 1
    similar = at.dataframe[2].value
    assert len(similar) == 10 and f"{feature_link(sae, feature)}&run={precomputed_run.name}" not in list(similar["feature"])


def test_examples_html_matches_the_stored_activations(precomputed_run, busiest):
    sae, feature, _ = busiest
    with FeatureStore(precomputed_run) as store:
        page = store.feature(sae, feature)
    groups = example_groups(page)
    assert groups[0][0] == "Top activations" and len(groups[0][1]) == len(page.examples[page.examples.kind == 0])
    top = page.examples.iloc[0]
    assert f": {top.activation:.3f}" in groups[0][1][0]


@pytest.mark.parametrize(("params", "message"), [
    ({"sae": "L1M", "feature": "999"}, "L1M has no feature 999"),
    ({"sae": "L9Z", "feature": "1"}, "no SAE 'L9Z'"),
    ({"sae": "L1M", "feature": "abc"}, "feature must be a number"),
])
def test_bad_deep_links_show_a_message(monkeypatch, precomputed_run, params, message):
    at = _page(monkeypatch, precomputed_run, **params)
    assert not at.exception
    assert any(message in e.value for e in at.error)


def test_missing_feature_file_says_how_to_build_it(monkeypatch, tmp_path):
    (tmp_path / "run.json").write_text("{}")  # a run, trained or not, without its feature file
    at = _page(monkeypatch, tmp_path)
    assert not at.exception
    assert "does not exist" in at.error[0].value
    assert "sae-explorer precompute" in at.info[0].value


def test_a_split_run_browses_like_its_one_file(monkeypatch, precomputed_run, busiest, tmp_path):
    """After `sae-explorer split`, the same deep link draws the same page from the per-SAE files."""
    import shutil

    from sae_core.features.split import split_feature_file

    run = tmp_path / precomputed_run.name  # the same name: the links it draws name the run
    shutil.copytree(precomputed_run, run)
    split_feature_file(run / "features.duckdb")
    sae, feature, _ = busiest
    one, split = (_page(monkeypatch, r, sae=sae, feature=str(feature)) for r in (precomputed_run, run))
    assert not split.exception and split.subheader[0].value == one.subheader[0].value
    assert [m.value for m in split.markdown] == [m.value for m in one.markdown]
    assert len(split.dataframe) == len(one.dataframe) == 3
    for a, b in zip(split.dataframe, one.dataframe):
        pd.testing.assert_frame_equal(a.value, b.value)


def test_a_transcoder_feature_says_what_it_reads_and_writes(monkeypatch, precomputed_run):
    with FeatureStore(precomputed_run) as store:
        live = {sae: store.live_features(sae)[0] for sae in ("L1T", "L1M")}
    captions = {}
    for sae, feature in live.items():
        at = _page(monkeypatch, precomputed_run, sae=sae, feature=str(feature))
        assert not at.exception
        captions[sae] = next(c.value for c in at.caption if c.value.startswith("blocks."))
    assert captions["L1T"].startswith("blocks.1.ln2.hook_normalized → blocks.1.hook_mlp_out (a transcoder")
    assert captions["L1M"].startswith("blocks.1.hook_mlp_out · density")

"""Explanations, scores and search by meaning in the app (Streamlit AppTest) and in explorer.explanation_view."""

from __future__ import annotations

import math

from helpers import HOSTILE_EXPLANATION, app_page

from explorer.explanation_view import explanation_markdown, score_table, verdict
from explorer.feature_view import escape_markdown
from sae_core.features.reader import FeatureStore
from sae_core.interp.prompts import parse_explanation

STORED = parse_explanation(HOSTILE_EXPLANATION)


def _explained(run):
    with FeatureStore(run) as store:
        df = store.list_features(explained_only=True, sort_by="feature", descending=False, limit=10)
        return [(row.sae, int(row.feature)) for row in df.itertuples()]


def test_score_table_puts_each_score_beside_its_baselines():
    row = {"detection": 0.9, "detection_shuffled": 0.5, "detection_handle": 0.7, "fuzzing": 0.6, "fuzzing_shuffled": 0.55,
           "fuzzing_handle": float("nan"), "embedding": None}
    table = score_table(row).set_index("score")
    assert table.loc["detection", "margin"] == 0.2 and table.loc["fuzzing", "margin"] == 0.05
    assert table.loc["embedding", "explanation"] is None or math.isnan(table.loc["embedding", "explanation"])
    assert verdict(row) == "beats both baselines by more than 0.05 on 1 of 2 scores"
    assert verdict({}) .startswith("not scored")
    assert explanation_markdown({"explanation": "a*b"}) == "> a\\*b" and "no usable" in explanation_markdown({"explanation": ""})


def test_feature_page_shows_the_explanation_literally_with_its_scores(monkeypatch, explained_run):
    sae, feature = _explained(explained_run)[0]
    at = app_page(monkeypatch, "2_Features.py", explained_run, sae=sae, feature=str(feature)).run()
    assert not at.exception
    shown = [m.value for m in at.markdown]
    assert "**bold**" in STORED and "[x](http" in STORED and "<" not in STORED  # markup kept as text, angle brackets defused
    assert f"> {escape_markdown(STORED)}" in shown  # shown literally: escaped, never rendered as markup
    assert not any("<script>" in m for m in shown)
    assert any("explained by canned-explainer · scored by keyword-scorer" in c.value for c in at.caption)
    scores = next(d.value for d in at.dataframe if "margin" in d.value.columns)
    assert list(scores["score"]) == ["detection", "fuzzing", "embedding"]
    assert {"explanation", "another feature's explanation", "token handle"} <= set(scores.columns)


def test_feature_list_sorts_and_filters_by_score(monkeypatch, explained_run):
    at = app_page(monkeypatch, "2_Features.py", explained_run).run()
    next(c for c in at.checkbox if c.label == "explained features only").check()
    next(s for s in at.selectbox if s.label == "sort by").set_value("detection")
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == len(_explained(explained_run)) and table["explanation"].notna().all()
    detection = [d for d in table["detection"] if d == d]
    assert detection == sorted(detection, reverse=True)


def test_search_by_meaning_box(monkeypatch, explained_run):
    at = app_page(monkeypatch, "2_Features.py", explained_run).run()
    assert at.radio[0].value == "meaning"  # the file has vectors: meaning search comes first
    at.text_input[0].set_value("tokens in bold").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) > 0 and "similarity" in table.columns
    assert list(table["similarity"]) == sorted(table["similarity"], reverse=True)
    at.text_input[0].set_value("   ").run()
    assert at.error and "query is empty" in at.error[0].value


def test_hovers_show_explanations_where_labels_were(explained_run):
    with FeatureStore(explained_run) as store:
        row = store.list_features(explained_only=True, sort_by="detection", limit=1).iloc[0]
        sae, feature = row.sae, int(row.feature)
        described = store.describe(sae, [feature, 0])
        assert described[feature].startswith(STORED) and "(detection" in described[feature]
        unexplained = next(f for f in range(48) if (sae, f) not in _explained(explained_run))
        assert store.describe(sae, [unexplained])[unexplained] == store.labels(sae, [unexplained])[unexplained]


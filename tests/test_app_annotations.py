"""A user annotates features from the feature page (note, tags, a list), saved with the run and not in the
feature file; lists are browsed and exported; unreadable annotation files warn without breaking the page."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import app_page

from sae_core.features.annotations import annotations_dir, read_annotations


@pytest.fixture
def run(tmp_path, precomputed_run):
    copy = tmp_path / precomputed_run.name  # the same name: the links the page draws name the run
    shutil.copytree(precomputed_run, copy)
    return copy


def _by_label(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def test_a_note_tags_and_a_list_are_saved_with_the_run(monkeypatch, run, busiest):
    sae, feature, _ = busiest
    stats = (run / "features.duckdb").stat().st_mtime_ns
    at = app_page(monkeypatch, "2_Features.py", run, sae=sae, feature=str(feature)).run()
    assert not at.exception and not at.info  # nothing noted yet
    _by_label(at.text_input, "note").input("fires on *dates*")
    _by_label(at.text_input, "tags").input("time, calendar")
    _by_label(at.text_input, "add to list").input("to check")
    _by_label(at.button, "save").click().run()
    assert not at.exception and not at.error
    assert "fires on \\*dates\\*" in at.info[0].value and "*user*" in at.info[0].value  # shown literally
    assert any("tags: time, calendar" in c.value and "to check" in c.value for c in at.caption)
    (mine,) = read_annotations(run)[0]
    assert mine.source == "user" and mine.lists == {"to check": [(sae, feature)]}
    assert (run / "features.duckdb").stat().st_mtime_ns == stats  # the statistics file is never written

    at = app_page(monkeypatch, "2_Features.py", run).run()
    at.radio[0].set_value("annotated features").run()
    _by_label(at.selectbox, "show").set_value("list: to check").run()
    assert not at.exception and len(at.dataframe[0].value) == 1
    assert at.dataframe[0].value["note"].iloc[0] == "fires on *dates*"
    assert at.get("download_button")  # the list exports as JSON


def test_an_empty_annotation_says_what_to_write(monkeypatch, run, busiest):
    sae, feature, _ = busiest
    at = app_page(monkeypatch, "2_Features.py", run, sae=sae, feature=str(feature)).run()
    _by_label(at.button, "save").click().run()
    assert not at.exception and "write a note, a tag or a list's name first" in at.error[0].value
    assert not annotations_dir(run).exists()


def test_an_unreadable_annotation_file_warns_and_the_rest_still_shows(monkeypatch, run, busiest):
    sae, feature, _ = busiest
    annotations_dir(run).mkdir()
    (annotations_dir(run) / "broken.json").write_text("{")
    (annotations_dir(run) / "study.json").write_text(json.dumps(
        {"source": "study", "notes": [{"sae": sae, "feature": feature, "text": "a study's note"},
                                      {"sae": "L9Z", "feature": 1, "text": "an SAE this file does not have"}]}))
    at = app_page(monkeypatch, "2_Features.py", run).run()
    assert not at.exception and any("broken.json skipped" in w.value for w in at.warning)
    at.radio[0].set_value("annotated features").run()
    assert not at.exception and list(at.dataframe[0].value["sae"]) == [sae]  # the unknown SAE's note is left out
    at = app_page(monkeypatch, "2_Features.py", run, sae=sae, feature=str(feature)).run()
    assert not at.exception and "a study's note" in at.info[0].value

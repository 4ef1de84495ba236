"""The refusal study in the app (Streamlit AppTest): the Features page marks its features, the Steering page
offers them as presets."""

from __future__ import annotations

from helpers import app_page

from explorer.feature_view import escape_markdown
from sae_core.refusal.presets import refusal_presets
from sae_core.refusal.results import refusal_features
from sae_core.runs.open_run import open_run_saes


def test_features_page_marks_refusal_features(monkeypatch, refusal_run):
    first = int(refusal_features(refusal_run)["L0R"]["feature"].iloc[0])
    at = app_page(monkeypatch, "2_Features.py", refusal_run, sae="L0R", feature=str(first)).run()
    assert not at.exception
    assert escape_markdown("refusal feature: prompt contrast #1") in at.info[0].value and escape_markdown("refusal-study") in at.info[0].value
    at = app_page(monkeypatch, "2_Features.py", refusal_run).run()
    assert at.dataframe[0].value["annotations"].str.startswith("refusal feature").any()
    at.radio[0].set_value("annotated features").run()
    assert not at.exception
    listed = at.dataframe[0].value
    assert len(listed) >= 10 and listed["note"].str.startswith("refusal feature").all()


def test_no_refusal_marks_without_a_study(monkeypatch, precomputed_run):
    at = app_page(monkeypatch, "2_Features.py", precomputed_run).run()
    assert not at.exception and "annotated features" not in at.radio[0].options
    at = app_page(monkeypatch, "6_Steering.py", precomputed_run, timeout=120).run()
    assert not at.exception and not any(box.label == "preset" for box in at.selectbox)


def test_steering_page_fills_a_refusal_preset(monkeypatch, refusal_run, tiny_loaded):
    presets = refusal_presets(refusal_run, open_run_saes(refusal_run, loaded=tiny_loaded, log=lambda m: None).saes)
    name = next(n for n in presets if "top-3" in n)
    at = app_page(monkeypatch, "6_Steering.py", refusal_run, timeout=120).run()
    assert not at.exception
    preset = next(box for box in at.selectbox if box.label == "preset")
    preset.set_value(name).run()
    assert not at.exception
    assert at.number_input(key="n_edits").value == 3
    for i, edit in enumerate(presets[name]):
        assert at.selectbox(key=f"site-{i}").value == edit.site.short
        assert at.number_input(key=f"feature-{i}").value == edit.feature
        assert at.number_input(key=f"strength-{i}").value == round(edit.strength, 2)
    at.checkbox[0].set_value(False)
    at.button[0].click().run()
    assert not at.exception

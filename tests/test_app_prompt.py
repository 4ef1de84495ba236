"""The Prompt page (Streamlit AppTest) and the live prompt functions, on the tiny precomputed run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import app_page, heatmap_values
from streamlit.testing.v1 import AppTest

from sae_core.errors import UserError
from sae_core.interventions.prompt_activations import prompt_activations, strongest_features, tokenize_prompt
from sae_core.model.hooks import run_to_sites
from sae_core.runs.open_run import open_run_saes

TEXT = "the river city music science history ocean language learning light"


@pytest.fixture(scope="module")
def opened(precomputed_run, tiny_loaded):
    return open_run_saes(precomputed_run, loaded=tiny_loaded, log=lambda m: None)


def test_prompt_activations_equal_a_direct_encode(opened):
    prompt = tokenize_prompt(opened.loaded, TEXT)
    acts = prompt_activations(opened.loaded, opened.saes, prompt)
    raw = run_to_sites(opened.loaded.model, prompt.ids[None], sites=list(opened.saes), layout=opened.loaded.layout)
    for site, sae in opened.saes.items():
        expected = sae.encode(raw[site][0]) * prompt.real[:, None]
        torch.testing.assert_close(acts[site], expected)
        assert (acts[site][~prompt.real] == 0).all()
    site = next(iter(acts))
    top = strongest_features(acts[site], 5)
    assert top and acts[site][:, top[0]].max() == acts[site].max()


def test_long_prompts_are_truncated_and_empty_ones_refused(opened):
    prompt = tokenize_prompt(opened.loaded, TEXT * 50, max_tokens=16)
    assert len(prompt.ids) == 16 and prompt.truncated_from > 16
    with pytest.raises(UserError, match="the prompt is empty"):
        tokenize_prompt(opened.loaded, "   ")


def _page(monkeypatch, run: Path) -> AppTest:
    return app_page(monkeypatch, "3_Prompt.py", run)


def test_prompt_page_heatmap_values_equal_a_direct_encode(monkeypatch, precomputed_run, opened):
    at = _page(monkeypatch, precomputed_run).run()
    at.text_area[0].set_value(TEXT)
    at.button[0].click().run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # one heatmap per default site
    z = heatmap_values(charts[0])
    first = next(iter(opened.saes))
    prompt = tokenize_prompt(opened.loaded, TEXT)
    acts = prompt_activations(opened.loaded, {first: opened.saes[first]}, prompt)[first]
    features = strongest_features(acts, 20)
    torch.testing.assert_close(torch.from_numpy(z.copy()), acts[:, features], rtol=1e-4, atol=1e-5)


def test_prompt_page_explains_bad_input(monkeypatch, precomputed_run):
    at = _page(monkeypatch, precomputed_run).run()
    at.text_area[0].set_value("  ")
    at.button[0].click().run()
    assert not at.exception and "the prompt is empty" in at.error[0].value
    at.multiselect[0].set_value([])
    at.button[0].click().run()
    assert not at.exception and "Pick at least one site" in at.warning[0].value


def test_prompt_page_without_a_run(monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path / "nope").run()  # a folder that is not a run is never served
    assert not at.exception and "No such run" in at.error[0].value


def test_a_feature_link_opens_its_site_and_shades_by_it(monkeypatch, precomputed_run):
    at = _page(monkeypatch, precomputed_run)
    at.query_params["sae"] = "L1A"
    at.query_params["feature"] = "7"
    at.run()
    assert not at.exception
    assert at.multiselect[0].value == ["L1A"]
    assert at.selectbox[0].value.startswith("#7")

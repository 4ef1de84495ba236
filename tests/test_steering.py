"""Steering generation with SAE features on the tiny model."""

from __future__ import annotations

import pytest

from sae_core.errors import UserError
from sae_core.interventions.steering import FeatureEdit, generate
from sae_core.model.sites import parse_site
from sae_core.runs.open_run import open_run_saes


@pytest.fixture(scope="module")
def opened(precomputed_run, tiny_loaded):
    return open_run_saes(precomputed_run, loaded=tiny_loaded, log=lambda m: None)


def test_strong_steering_changes_the_answer_and_zero_does_not(opened):
    site = parse_site("L1M")
    plain = generate(opened.loaded, opened.saes, "river city music", max_new_tokens=12, chat=False)
    same = generate(opened.loaded, opened.saes, "river city music", [FeatureEdit(site, 3, 0.0)], max_new_tokens=12, chat=False)
    steered = generate(opened.loaded, opened.saes, "river city music", [FeatureEdit(site, 3, 50.0)], max_new_tokens=12, chat=False)
    clamped = generate(opened.loaded, opened.saes, "river city music", [FeatureEdit(site, 3, 50.0, "clamp")], max_new_tokens=12, chat=False)
    assert same == plain
    assert steered != plain and clamped != plain


def test_bad_steering_requests_are_clear_errors(opened):
    with pytest.raises(UserError, match="no feature 999"):
        generate(opened.loaded, opened.saes, "hi", [FeatureEdit(parse_site("L1M"), 999, 1.0)], chat=False)
    with pytest.raises(UserError, match="no SAE at L0M"):
        generate(opened.loaded, opened.saes, "hi", [FeatureEdit(parse_site("L0M"), 1, 1.0)], chat=False)
    with pytest.raises(UserError, match="the message is empty"):
        generate(opened.loaded, opened.saes, " ", chat=False)


def test_a_chat_message_needs_a_chat_template(opened, monkeypatch):
    monkeypatch.setattr(opened.loaded.tokenizer, "chat_template", None)
    with pytest.raises(UserError, match="has no chat template; untick the chat option"):
        generate(opened.loaded, opened.saes, "hi", chat=True)

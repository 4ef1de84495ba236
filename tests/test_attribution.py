"""Attribution by activation × gradient, checked against ablation on the tiny model."""

from __future__ import annotations

import pytest

from sae_core.errors import UserError
from sae_core.interventions.attribution import Target, ablate, attribute
from sae_core.interventions.prompt_activations import tokenize_prompt
from sae_core.model.sites import parse_site
from sae_core.runs.open_run import open_run_saes

TEXT = "the river city music science history ocean language learning light"


@pytest.fixture(scope="module")
def setup(precomputed_run, tiny_loaded):
    opened = open_run_saes(precomputed_run, loaded=tiny_loaded, log=lambda m: None)
    prompt = tokenize_prompt(opened.loaded, TEXT)
    return opened, prompt


def test_splicing_for_gradients_leaves_the_logits_unchanged(setup):
    opened, prompt = setup
    target = Target(position=len(prompt.ids) - 1, token=5)
    value, _ = attribute(opened.loaded, opened.saes, prompt, target)
    clean = opened.loaded.model(input_ids=prompt.ids[None]).logits[0, -1, 5]
    assert value == pytest.approx(float(clean), abs=1e-4)


def test_top_feature_moves_the_target_when_ablated(setup):
    opened, prompt = setup
    last = len(prompt.ids) - 1
    target = Target(position=last, token=int(prompt.ids[last]), minus_token=7)
    _, table = attribute(opened.loaded, opened.saes, prompt, target, top=20)
    assert len(table) > 0 and table["attribution"].abs().is_monotonic_decreasing
    top = table.iloc[0]
    assert top["attribution"] == pytest.approx(top["activation"] * top["gradient"], rel=1e-5)
    before, after = ablate(opened.loaded, opened.saes, prompt, target, [(parse_site(top["site"]), int(top["position"]), int(top["feature"]))])
    change = after - before
    assert abs(change) > 1e-4
    assert change == pytest.approx(-top["attribution"], rel=0.5, abs=0.05)  # first-order estimate of the effect


def test_bad_targets_are_clear_errors(setup):
    opened, prompt = setup
    with pytest.raises(UserError, match="outside the prompt"):
        attribute(opened.loaded, opened.saes, prompt, Target(position=999, token=1))
    with pytest.raises(UserError, match="outside the vocabulary"):
        ablate(opened.loaded, opened.saes, prompt, Target(position=0, token=10**7), [])

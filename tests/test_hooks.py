import pytest
import torch

from sae_core.model.hooks import StopForward, capture, replace_output, run_to_sites, site_output, splice, steer
from sae_core.model.layout import find_layout
from sae_core.model.sites import Site, all_sites
from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer

N_LAYERS = 3


@pytest.fixture(scope="module")
def models():
    return {}


def _model(models, family):
    if family not in models:
        models[family] = tiny_model(family, n_layers=N_LAYERS)
    return models[family]


@pytest.fixture(scope="module")
def batch():
    tok = tiny_tokenizer()
    enc = tok(
        ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, she said."],
        return_tensors="pt",
        padding=True,
    )
    return enc["input_ids"], enc["attention_mask"]


def _hook_counts(model):
    return {name: len(m._forward_hooks) for name, m in model.named_modules()}


def _logits(model, input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids, **kwargs).logits


def test_site_output_and_replace_output():
    x, y, extra = torch.zeros(1), torch.ones(1), object()
    assert site_output(x) is x and site_output((x, extra)) is x
    assert replace_output(x, y) is y
    assert replace_output((x, extra), y) == (y, extra)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma", "gpt2"])
def test_resid_post_matches_hidden_states(models, batch, family):
    model = _model(models, family)
    input_ids, mask = batch
    with torch.no_grad():
        hidden = model(input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    sites = [Site(i, "resid_post") for i in range(N_LAYERS - 1)]
    acts = run_to_sites(model, input_ids, mask, sites)
    assert set(acts) == set(sites)
    for site in sites:
        # hidden_states[0] is the embedding output, so layer i's output is hidden_states[i + 1]
        torch.testing.assert_close(acts[site], hidden[site.layer + 1], rtol=0, atol=0)
        assert acts[site].shape == (*input_ids.shape, 64)
        assert not acts[site].requires_grad


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2"])
def test_attn_and_mlp_outputs_add_up_to_the_residual_stream(models, batch, family):
    model = _model(models, family)
    input_ids, mask = batch
    acts = run_to_sites(model, input_ids, mask, all_sites(N_LAYERS))
    for i in range(1, N_LAYERS):
        resid_pre = acts[Site(i - 1, "resid_post")]
        rebuilt = resid_pre + acts[Site(i, "attn_out")] + acts[Site(i, "mlp_out")]
        torch.testing.assert_close(rebuilt, acts[Site(i, "resid_post")], rtol=1e-5, atol=1e-5)


def test_early_stop_skips_later_layers_and_matches_full_forward(models, batch):
    model = _model(models, "llama")
    input_ids, mask = batch
    calls = []
    handle = model.model.layers[-1].register_forward_hook(lambda *args: calls.append(1))
    try:
        sites = [Site(0, "mlp_out"), Site(1, "resid_post"), Site(0, "attn_out")]
        acts = run_to_sites(model, input_ids, mask, sites)
        assert calls == []
        with capture(model, sites, stop_early=False) as full, torch.no_grad():
            model(input_ids, attention_mask=mask)
        assert len(calls) == 1
    finally:
        handle.remove()
    for site in sites:
        torch.testing.assert_close(acts[site], full[site], rtol=0, atol=0)


def test_capture_with_stop_early_raises_stop_forward(models, batch):
    model = _model(models, "qwen3")
    with capture(model, ["L0R"]) as acts, pytest.raises(StopForward):
        model(batch[0])
    assert acts[Site(0, "resid_post")].shape == (*batch[0].shape, 64)


def test_capture_accepts_names_and_refills_on_each_pass(models, batch):
    model = _model(models, "qwen3")
    with capture(model, ["blocks.0.hook_mlp_out", "L1A"], stop_early=False) as acts, torch.no_grad():
        model(batch[0][:1])
        first = acts[Site(0, "mlp_out")]
        model(batch[0])
        assert acts[Site(0, "mlp_out")].shape[0] == 2 and first.shape[0] == 1
        assert Site(1, "attn_out") in acts


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_identity_splice_leaves_logits_unchanged(models, batch, family):
    model = _model(models, family)
    input_ids, mask = batch
    before = _logits(model, input_ids, attention_mask=mask)
    with splice(model, Site(1, "attn_out"), lambda x, _: x), splice(model, Site(1, "resid_post"), lambda x, _: x.clone()):
        after = _logits(model, input_ids, attention_mask=mask)
    assert torch.equal(before, after)


def test_zero_splice_changes_logits(models, batch):
    model = _model(models, "llama")
    input_ids, _ = batch
    before = _logits(model, input_ids)
    with splice(model, "L1A", lambda x, _: torch.zeros_like(x)):
        ablated = _logits(model, input_ids)
    assert not torch.allclose(before, ablated)
    torch.testing.assert_close(_logits(model, input_ids), before, rtol=0, atol=0)


def test_masked_splice_only_changes_masked_positions(models, batch):
    model = _model(models, "qwen3")
    input_ids, _ = batch
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    mask[0, 4] = True
    captured = {}
    before = _logits(model, input_ids)
    with splice(model, Site(0, "resid_post"), lambda x, _: torch.zeros_like(x), mask=mask):
        with capture(model, [Site(0, "resid_post")], stop_early=False) as acts:
            after = _logits(model, input_ids)
            captured.update(acts)
    resid = captured[Site(0, "resid_post")]
    assert torch.all(resid[0, 4] == 0) and resid[0, 3].abs().sum() > 0
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)
    assert not torch.allclose(after[0, 4:], before[0, 4:])


def test_splice_checks_mask_and_output_shapes(models, batch):
    model = _model(models, "qwen3")
    input_ids, _ = batch
    with splice(model, "L0R", lambda x, _: x, mask=torch.ones(1, 3, dtype=torch.bool)), pytest.raises(ValueError, match="mask"):
        _logits(model, input_ids)
    with splice(model, "L0R", lambda x, _: x[:, :1]), pytest.raises(ValueError, match="shape"):
        _logits(model, input_ids)


@pytest.mark.parametrize("site", [Site(1, "resid_post"), Site(0, "mlp_out"), Site(1, "attn_out")])
def test_steer_adds_alpha_times_direction(models, batch, site):
    model = _model(models, "gemma2")
    input_ids, _ = batch
    direction = torch.randn(64)
    plain = run_to_sites(model, input_ids, sites=[site])[site]
    # capture is entered first, yet still sees the steered activation
    with capture(model, [site], stop_early=False) as acts, steer(model, site, direction, alpha=3.0):
        _logits(model, input_ids)
    torch.testing.assert_close(acts[site] - plain, (3.0 * direction).expand_as(plain), rtol=1e-5, atol=1e-5)


def test_steer_at_positions(models, batch):
    model = _model(models, "llama")
    input_ids, _ = batch
    site = Site(0, "resid_post")
    positions = torch.zeros(input_ids.shape, dtype=torch.bool)
    positions[:, -1] = True
    plain = run_to_sites(model, input_ids, sites=[site])[site]
    with steer(model, site, torch.ones(64), alpha=2.0, positions=positions):
        steered = run_to_sites(model, input_ids, sites=[site])[site]
    torch.testing.assert_close(steered[:, :-1], plain[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(steered[:, -1] - plain[:, -1], torch.full_like(plain[:, -1], 2.0), rtol=1e-5, atol=1e-5)


def test_steer_rejects_wrong_direction_shape(models):
    with pytest.raises(ValueError, match=r"\(64,\)"):
        with steer(_model(models, "llama"), "L0R", torch.ones(63)):
            pass


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steer_and_splice_work_inside_generate(models, family):
    model = _model(models, family)
    prompt = torch.tensor([[1, 40, 41, 42]])
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(prompt, **kwargs)
        with splice(model, "L0M", lambda x, _: x):
            same = model.generate(prompt, **kwargs)
        lengths = []
        with capture(model, ["L1R"], stop_early=False) as acts:
            with steer(model, "L1R", torch.randn(64), alpha=50.0):
                steered = model.generate(prompt, output_logits=True, return_dict_in_generate=True, **kwargs)
                lengths.append(acts[Site(1, "resid_post")].shape[1])
    assert torch.equal(plain, same)
    assert steered.sequences.shape == (1, 7)
    assert lengths == [1]  # the last cached step saw one new token
    with torch.no_grad():
        unsteered = model(prompt).logits[0, -1]
    assert not torch.allclose(steered.logits[0][0], unsteered)


def test_nested_context_managers_clean_up_after_exceptions(models, batch):
    model = _model(models, "gemma2")
    layout = find_layout(model)
    input_ids, _ = batch
    with torch.no_grad():
        model(input_ids, output_hidden_states=True)  # transformers installs its own recorder hooks once
    before = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, all_sites(N_LAYERS), layout=layout, stop_early=False):
            with splice(model, "L1M", lambda x, _: x, layout=layout), steer(model, "L1M", torch.ones(64), layout=layout):
                with splice(model, "L0A", lambda x, _: torch.zeros_like(x), layout=layout):
                    assert _hook_counts(model) != before
                    _logits(model, input_ids)
                    raise RuntimeError("boom")
    assert _hook_counts(model) == before
    with pytest.raises(StopForward):
        with capture(model, ["L0R"]):
            model(input_ids)
    assert _hook_counts(model) == before
    fresh = tiny_model("llama", n_layers=2)
    with capture(fresh, all_sites(2), stop_early=False), steer(fresh, "L0R", torch.ones(64)):
        pass
    assert all(not m._forward_hooks for m in fresh.modules())

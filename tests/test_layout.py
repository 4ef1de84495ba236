import pytest
import torch
from torch import nn

from sae_core.errors import ModelLoadError, SiteError
from sae_core.model.layout import find_layout
from sae_core.model.sites import Site
from sae_core.testing.tiny_models import FAMILIES, tiny_config, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_find_layout_every_family(family):
    model = tiny_model(family, n_layers=3, d_model=64)
    layout = find_layout(model)
    assert layout.n_layers == 3
    assert layout.d_model == 64
    assert layout.max_positions == 256
    assert layout.unembed is model.lm_head
    layers = model.transformer.h if family == "gpt2" else model.model.layers
    assert layout.base_model is (model.transformer if family == "gpt2" else model.model)
    assert layout.final_norm is (model.transformer.ln_f if family == "gpt2" else model.model.norm)
    assert layout.layers is layers
    for i in range(3):
        assert layout.module_for(Site(i, "resid_post")) is layers[i]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma"])
def test_pre_norm_families_use_attention_and_mlp_modules(family):
    model = tiny_model(family)
    layout = find_layout(model)
    assert layout.family == family
    layer = model.model.layers[1]
    assert layout.module_for(Site(1, "attn_out")) is layer.self_attn
    assert layout.module_for(Site(1, "mlp_out")) is layer.mlp


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_post_norm_families_use_the_post_norms(family):
    model = tiny_model(family)
    layout = find_layout(model)
    layer = model.model.layers[1]
    assert layout.module_for(Site(1, "attn_out")) is layer.post_attention_layernorm
    assert layout.module_for(Site(1, "mlp_out")) is layer.post_feedforward_layernorm


def test_gpt2_modules():
    model = tiny_model("gpt2")
    layout = find_layout(model)
    assert layout.family == "gpt2"
    assert layout.module_for(Site(0, "attn_out")) is model.transformer.h[0].attn
    assert layout.module_for(Site(0, "mlp_out")) is model.transformer.h[0].mlp


def test_gemma3_multimodal_text_tower():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(text_config=tiny_config("gemma3").to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    model = Gemma3ForConditionalGeneration(config).eval()
    layout = find_layout(model)
    text = model.model.language_model
    assert layout.base_model is text and layout.n_layers == 2 and layout.d_model == 64
    assert layout.module_for(Site(0, "mlp_out")) is text.layers[0].post_feedforward_layernorm
    assert layout.unembed is model.lm_head


def test_module_for_out_of_range():
    layout = find_layout(tiny_model("llama"))
    with pytest.raises(SiteError, match="out of range"):
        layout.module_for(Site(2, "resid_post"))


def test_unknown_llama_like_family_is_accepted_with_a_warning():
    from transformers import AutoModelForCausalLM, Phi3Config

    config = Phi3Config(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, pad_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.warns(UserWarning, match="llama-like"):
        layout = find_layout(model)
    assert layout.module_for(Site(1, "attn_out")) is model.model.layers[1].self_attn


def _tiny_bert():
    from transformers import BertConfig, BertLMHeadModel

    config = BertConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=128,
        is_decoder=True,
    )
    return BertLMHeadModel(config)


def _tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(num_layers=2, d_model=64, d_ff=128, num_heads=4, d_kv=16, vocab_size=128)
    return T5ForConditionalGeneration(config)


@pytest.mark.parametrize("build", [_tiny_bert, _tiny_t5, lambda: nn.Linear(4, 4)])
def test_unsupported_models_are_refused(build):
    model = build()
    with pytest.raises(ModelLoadError) as err:
        find_layout(model)
    message = str(err.value)
    assert type(model).__name__ in message
    assert "llama" in message and "gemma2" in message and "gpt2" in message
    assert "model.layers" in message


def test_base_model_without_head_is_refused():
    with pytest.raises(ModelLoadError, match="LlamaModel"):
        find_layout(tiny_model("llama").model)


def test_layout_of_a_model_runs_base_model():
    model = tiny_model("qwen3")
    layout = find_layout(model)
    out = layout.base_model(input_ids=torch.tensor([[1, 5, 6]]), use_cache=False)
    assert out.last_hidden_state.shape == (1, 3, 64)

"""Where the sites live inside a Hugging Face causal LM: decoder layers, attention / MLP outputs, norm, unembedding.

The attention and MLP modules are those whose output is added to the residual stream, as
TransformerLens's `hook_attn_out` / `hook_mlp_out` see it: for Gemma 2 / 3 that is the output
of the post-norms, for every other family the attention / MLP module itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn

from sae_core.errors import ModelLoadError, SiteError
from sae_core.model.sites import Site

PRE_NORM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma")
"""Families whose `self_attn` / `mlp` outputs are added to the residual stream as they are."""
POST_NORM_FAMILIES = ("gemma2", "gemma3", "gemma3_text")
"""Families that normalise the attention / MLP output before adding it (post-norms)."""
GPT2_FAMILIES = ("gpt2",)
SUPPORTED_FAMILIES = PRE_NORM_FAMILIES + POST_NORM_FAMILIES + GPT2_FAMILIES

_ATTN_MLP_NAMES = {
    **{family: ("self_attn", "mlp") for family in PRE_NORM_FAMILIES},
    **{family: ("post_attention_layernorm", "post_feedforward_layernorm") for family in POST_NORM_FAMILIES},
    "gpt2": ("attn", "mlp"),
}
# (path of the base model, attribute of its decoder layers, attribute of its final norm)
_BASE_PATHS = (
    ("model.language_model", "layers", "norm"),
    ("model", "layers", "norm"),
    ("transformer", "h", "ln_f"),
)
_EXPECTED = (
    "a causal LM with decoder layers at model.layers (or transformer.h, model.language_model.layers), "
    "each with self_attn and mlp (or attn and mlp), a final norm and an lm_head"
)


@dataclass(frozen=True, eq=False)
class ModelLayout:
    """The modules of one causal LM that the sites hook into."""

    family: str
    """The config's model_type (of the text tower for multimodal models), e.g. `llama`, `gemma3_text`."""
    n_layers: int
    d_model: int
    max_positions: int | None
    """Longest context the model was built for (max_position_embeddings / n_positions), if the config says."""
    base_model: nn.Module
    """Runs embeddings and decoder layers without the LM head, e.g. `model.model`."""
    layers: nn.ModuleList
    """The base model's own list of decoder layers; layer i's output is `blocks.{i}.hook_resid_post`."""
    attn_out: tuple[nn.Module, ...]
    """Per layer, the module whose output is the attention output as added to the residual stream."""
    mlp_out: tuple[nn.Module, ...]
    """Per layer, the module whose output is the MLP output as added to the residual stream."""
    mlp: tuple[nn.Module, ...]
    """Per layer, the MLP itself: its input (after the pre-MLP norm) is what a transcoder reads."""
    final_norm: nn.Module
    unembed: nn.Module
    """The LM head: `(…, d_model) -> (…, vocab)`."""

    def module_for(self, site: Site) -> nn.Module:
        """The module whose forward output is `site`'s activation `(B, T, d_model)`."""
        if site.layer >= self.n_layers:
            raise SiteError(
                f"site {site.short} is out of range: the model has {self.n_layers} layers "
                f"(L0 … L{self.n_layers - 1})"
            )
        modules = {"resid_post": self.layers, "attn_out": self.attn_out, "mlp_out": self.mlp_out, "transcoder": self.mlp_out}
        return modules[site.kind][site.layer]

    def source_module_for(self, site: Site) -> nn.Module:
        """The module whose forward *input* a transcoder site reads (the MLP); for other sites `module_for(site)`."""
        return self.mlp[site.layer] if site.is_transcoder else self.module_for(site)


def find_layout(model: nn.Module) -> ModelLayout:
    """Find the site modules of a supported causal LM; anything else raises ModelLoadError."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise _unsupported(model, "it has no Hugging Face config")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = text_config.model_type
    base, layers, final_norm = _find_base(model)
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or unembed is None:
        raise _unsupported(model, "its decoder layers, final norm or LM head were not found")
    attn_name, mlp_name = _attn_mlp_names(model, family, layers)
    missing = [name for name in dict.fromkeys((attn_name, mlp_name, "mlp")) if not all(hasattr(layer, name) for layer in layers)]
    if missing:
        raise _unsupported(model, f"its decoder layers have no {' / '.join(missing)}")
    d_model = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", None)
    max_positions = getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)
    return ModelLayout(
        family=family,
        n_layers=len(layers),
        d_model=int(d_model),
        max_positions=max_positions,
        base_model=base,
        layers=layers,
        attn_out=tuple(getattr(layer, attn_name) for layer in layers),
        mlp_out=tuple(getattr(layer, mlp_name) for layer in layers),
        mlp=tuple(layer.mlp for layer in layers),
        final_norm=final_norm,
        unembed=unembed,
    )


def _find_base(model: nn.Module) -> tuple[nn.Module | None, nn.ModuleList | None, nn.Module | None]:
    """(base model, decoder layers, final norm) at the first known path, or Nones."""
    for path, layers_name, norm_name in _BASE_PATHS:
        base = model
        for part in path.split("."):
            base = getattr(base, part, None)
        layers = getattr(base, layers_name, None)
        norm = getattr(base, norm_name, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and norm is not None:
            return base, layers, norm
    return None, None, None


def _attn_mlp_names(model: nn.Module, family: str, layers: nn.ModuleList) -> tuple[str, str]:
    """Attribute names of the attention / MLP output modules, by family; llama-like unknown families pass."""
    if family in _ATTN_MLP_NAMES:
        return _ATTN_MLP_NAMES[family]
    layer = layers[0]
    # Llama's post_attention_layernorm is the *pre*-MLP norm; a layer with pre/post feed-forward norms
    # (Gemma 2 style) or without input_layernorm (OLMo 2 style) normalises outputs, which we cannot guess.
    llama_like = all(hasattr(layer, name) for name in ("self_attn", "mlp", "input_layernorm")) and not any(
        hasattr(layer, name) for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm")
    )
    if not llama_like:
        raise _unsupported(model, f"model_type {family!r} is not a known family and its layers are not llama-like")
    warnings.warn(
        f"model_type {family!r} is not a tested family; treating its layers as llama-like "
        "(self_attn / mlp outputs added to the residual stream)",
        stacklevel=3,
    )
    return "self_attn", "mlp"


def _unsupported(model: nn.Module, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"unsupported model {type(model).__name__}: {reason}. Supported families: "
        f"{', '.join(f for f in SUPPORTED_FAMILIES if f != 'gemma3_text')} (and llama-like decoders); "
        f"expected {_EXPECTED}"
    )

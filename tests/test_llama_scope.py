"""Llama Scope folders (`hyperparams.json` + `checkpoints/final.safetensors`, written by OpenMOSS's lm-saes) encode as
lm-saes's own `SparseAutoEncoder.from_pretrained` SAE does: its steps are written out below from its source at the
Llama Scope release (dataset-wise norm folded, decoder norms moved into the encoder, JumpReLU on a scalar threshold).
lm-saes does not install here (it pins TransformerLens and a CUDA stack), so the files are laid out as it saves them.
The registry name resolves to this reader; SAELens's own converter is shown to gate differently when decoder norms
are not 1 (the reason it is not used)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sae_core.errors import SAEFileError
from sae_core.loading import load_sae

D_IN, D_SAE = 16, 48
NAME = "Llama3_1-8B-Base-L1R-8x"


def _randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _hyperparams(**changes: object) -> dict[str, object]:
    """The keys of a released hyperparams.json (values of the tiny SAE)."""
    hp = {"hook_point_in": "blocks.1.hook_resid_post", "hook_point_out": "blocks.1.hook_resid_post", "d_model": D_IN,
          "d_sae": D_SAE, "expansion_factor": D_SAE // D_IN, "act_fn": "jumprelu", "jump_relu_threshold": 0.3,
          "norm_activation": "dataset-wise", "dataset_average_activation_norm": {"in": 3.0, "out": 3.0},
          "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": False, "sparsity_include_decoder_norm": True,
          "top_k": 5}
    hp.update(changes)
    return {k: v for k, v in hp.items() if v is not None}


def _weights(decoder_scale: float = 0.375) -> dict[str, Tensor]:
    """nn.Linear weights as lm-saes saves them; decoder columns of norm ≈ 1.5 (as in the release) by default."""
    return {"encoder.weight": _randn(D_SAE, D_IN, seed=1, scale=0.3), "encoder.bias": _randn(D_SAE, seed=2, scale=0.2),
            "decoder.weight": _randn(D_IN, D_SAE, seed=3, scale=decoder_scale), "decoder.bias": _randn(D_IN, seed=4, scale=0.5)}


def _llama_scope(root: Path, hp: dict[str, object] | None = None, weights: dict[str, Tensor] | None = None,
                 name: str = NAME) -> Path:
    folder = root / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "hyperparams.json").write_text(json.dumps(hp or _hyperparams()))
    save_file(weights or _weights(), str(folder / "checkpoints" / "final.safetensors"))
    return folder


def _lm_saes(folder: Path, x: Tensor) -> tuple[Tensor, Tensor]:
    """(feature acts, reconstruction) as lm-saes computes them: `from_config` standardises the dataset-wise norm and
    moves decoder norms into the encoder, then `encode` / `decode` run with the norm factor 1."""
    hp = {"apply_decoder_bias_to_pre_encoder": True, "sparsity_include_decoder_norm": True, "norm_activation": "token-wise",
          "top_k": 50, "jump_relu_threshold": 0.0, **json.loads((folder / "hyperparams.json").read_text())}
    sd = {k: v.double() for k, v in load_file(str(folder / "checkpoints" / "final.safetensors")).items()}
    if hp["norm_activation"] == "dataset-wise":  # standardize_parameters_of_dataset_activation_scaling
        s_in = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["in"]
        s_out = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["out"]
        sd["encoder.bias"] = sd["encoder.bias"] / s_in
        sd["decoder.bias"] = sd["decoder.bias"] / s_out
        sd["decoder.weight"] = sd["decoder.weight"] * s_in / s_out
    if hp["sparsity_include_decoder_norm"]:  # transform_to_unit_decoder_norm
        norm = torch.norm(sd["decoder.weight"], p=2, dim=0)
        sd["decoder.weight"] = sd["decoder.weight"] / norm
        sd["encoder.weight"] = sd["encoder.weight"] * norm[:, None]
        sd["encoder.bias"] = sd["encoder.bias"] * norm
    x = x.double()
    if hp["apply_decoder_bias_to_pre_encoder"]:
        x = x - sd["decoder.bias"]
    pre = x @ sd["encoder.weight"].T + sd["encoder.bias"]
    act, threshold = hp["act_fn"], hp["jump_relu_threshold"]
    if act == "jumprelu" or (act == "topk" and threshold > 0):
        acts = pre.where(pre > threshold, 0)
    elif act == "topk":
        feature_acts = torch.clamp(pre, min=0.0)
        top = torch.topk(feature_acts * torch.norm(sd["decoder.weight"], p=2, dim=0), k=hp["top_k"], dim=-1)
        acts = torch.zeros_like(feature_acts).scatter_(-1, top.indices, feature_acts.gather(-1, top.indices))
    else:
        acts = torch.clamp(pre, min=0.0)
    return acts.float(), (acts @ sd["decoder.weight"].T + sd["decoder.bias"]).float()


def _inputs(norm: float, seed: int = 99) -> Tensor:
    """64 activations whose norms spread around the dataset's average `norm`."""
    x = _randn(64, D_IN, seed=seed)
    return x / x.norm(dim=-1, keepdim=True) * norm * (0.5 + torch.rand(64, 1, generator=torch.Generator().manual_seed(seed)))


def _assert_encodes_as_lm_saes(sae, folder: Path, x: Tensor) -> None:
    acts, recon = _lm_saes(folder, x)
    fired = (acts > 0).float().mean().item()
    assert 0.05 < fired < 0.95, f"test data fires {fired:.0%} of latents: too few or too many to tell gates apart"
    torch.testing.assert_close(sae.encode(x), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(acts), recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes", [
    {},
    {"apply_decoder_bias_to_pre_encoder": True},
    {"dataset_average_activation_norm": {"in": 2.0, "out": 5.0}},
    {"norm_activation": "inference", "jump_relu_threshold": 0.1},
    {"act_fn": "topk", "jump_relu_threshold": 0.0},
    {"act_fn": "topk", "jump_relu_threshold": 0.2},
    {"act_fn": "relu", "sparsity_include_decoder_norm": False},
])
def test_llama_scope_encodes_as_lm_saes(tmp_path, changes):
    folder = _llama_scope(tmp_path, _hyperparams(**changes))
    sae = load_sae(folder)
    expected_arch = {"jumprelu": "jumprelu", "relu": "standard"}.get(changes.get("act_fn", "jumprelu"),
                                                                      "jumprelu" if changes.get("jump_relu_threshold") else "topk")
    assert (sae.cfg.architecture, sae.cfg.hook_name) == (expected_arch, "blocks.1.hook_resid_post")
    assert sae.cfg.model_name == "meta-llama/Llama-3.1-8B" and sae.cfg.metadata["converted_from"] == "llama_scope"
    _assert_encodes_as_lm_saes(sae, folder, _inputs(3.0))


def test_llama_scope_is_found_from_either_file_and_keys_left_out_take_lm_saes_defaults(tmp_path):
    hp = _hyperparams(hook_point_out=None, d_sae=None, use_decoder_bias=None, apply_decoder_bias_to_pre_encoder=None,
                      sparsity_include_decoder_norm=None)
    folder = _llama_scope(tmp_path, hp)  # defaults: out = in, d_sae = d_model × expansion, b_dec subtracted first
    for path in (folder, folder / "hyperparams.json", folder / "checkpoints" / "final.safetensors"):
        _assert_encodes_as_lm_saes(load_sae(path), folder, _inputs(3.0))
    mlp = _llama_scope(tmp_path / "m", _hyperparams(hook_point_in="blocks.4.hook_mlp_out", hook_point_out=None), name="x")
    assert load_sae(mlp).cfg.hook_name == "blocks.4.hook_mlp_out" and load_sae(mlp).cfg.model_name == ""


TRANSCODER = {"hook_point_in": "blocks.1.ln2.hook_normalized", "hook_point_out": "blocks.1.hook_mlp_out",
              "dataset_average_activation_norm": {"in": 2.0, "out": 5.0}}
"""A Llama Scope transcoder (`L1TC`): lm-saes's hook names for the MLP's normalised input and its output, each with its
own average norm."""


@pytest.mark.parametrize("changes", [
    {},
    {"apply_decoder_bias_to_pre_encoder": True},
    {"act_fn": "topk", "jump_relu_threshold": 0.0},
    {"act_fn": "relu", "sparsity_include_decoder_norm": False, "apply_decoder_bias_to_pre_encoder": True},
])
def test_llama_scope_transcoders_encode_and_predict_as_lm_saes(tmp_path, changes):
    folder = _llama_scope(tmp_path, _hyperparams(**{**TRANSCODER, **changes}), name="Llama3_1-8B-Base-L1TC-8x")
    sae = load_sae(folder)
    assert sae.cfg.transcoder and (sae.cfg.hook_name, sae.cfg.hook_name_out) == (TRANSCODER["hook_point_in"], TRANSCODER["hook_point_out"])
    assert sae.cfg.d_out == D_IN and sae.cfg.model_name == "meta-llama/Llama-3.1-8B"
    x = _inputs(2.0)
    _assert_encodes_as_lm_saes(sae, folder, x)
    torch.testing.assert_close(sae(x), _lm_saes(folder, x)[1], rtol=1e-5, atol=1e-5)  # the MLP-output prediction


def test_a_llama_scope_transcoder_imports_at_its_transcoder_site_only(tmp_path):
    from sae_core.model.load import load_model
    from sae_core.runs.import_saes import import_saes
    from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer

    model_dir = tmp_path / "model"
    tiny_model("llama", n_layers=2, d_model=D_IN).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    loaded = load_model(str(model_dir))
    folder = _llama_scope(tmp_path, _hyperparams(**TRANSCODER), name="Llama3_1-8B-Base-L1TC-8x")
    with pytest.raises(SAEFileError, match="is a transcoder but L1M is an SAE site"):
        import_saes([f"{folder}=L1M"], tmp_path / "run", loaded, model=None, outlier_factor=0, log=lambda m: None)
    elsewhere = _llama_scope(tmp_path / "x", _hyperparams(**{**TRANSCODER, "hook_point_out": "blocks.0.hook_mlp_out"}))
    with pytest.raises(SAEFileError, match=r"writes blocks.0.hook_mlp_out \(L0M\), but a transcoder at L1T predicts L1M"):
        import_saes([elsewhere], tmp_path / "run", loaded, model=None, outlier_factor=0, log=lambda m: None)
    run = import_saes([folder], tmp_path / "run", loaded, model=None, outlier_factor=0, log=lambda m: None)
    saved = load_sae(run.path / "saes" / "blocks.1.ln2.hook_normalized")
    assert saved.cfg.hook_name_out == "blocks.1.hook_mlp_out"
    x = _inputs(2.0)
    torch.testing.assert_close(saved(x), _lm_saes(folder, x)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("hp", "weights", "message"), [
    (_hyperparams(norm_activation="token-wise"), None, "rescales every input by its own norm"),
    (_hyperparams(use_glu_encoder=True), None, "GLU encoders"),
    (_hyperparams(dataset_average_activation_norm=None), None, "not positive in/out norms"),
    (_hyperparams(act_fn="gelu"), None, "act_fn 'gelu' is not one lm-saes defines"),
    (_hyperparams(d_sae=41), None, r"tensor encoder.weight has shape \(48, 16\) but hyperparams.json \(d_model=16, d_sae=41\)"),
    (_hyperparams(), {k: v for k, v in _weights().items() if k != "encoder.bias"}, "lacks tensor"),
])
def test_llama_scope_refusals(tmp_path, hp, weights, message):
    with pytest.raises(SAEFileError, match=message):
        load_sae(_llama_scope(tmp_path, hp, weights))


def test_llama_scope_missing_or_truncated_weights(tmp_path):
    folder = _llama_scope(tmp_path)
    weights = folder / "checkpoints" / "final.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(SAEFileError, match="corrupt or truncated"):
        load_sae(folder)
    weights.unlink()
    with pytest.raises(SAEFileError, match="has hyperparams.json but no weights"):
        load_sae(folder)


@pytest.fixture
def registry_folder(tmp_path, monkeypatch) -> Path:
    """SAELens's registry entry llama_scope_lxr_8x / l0r_8x, laid out in a Hugging Face cache (read offline), with the
    dataset norm that gives the registry's norm_scaling_factor at d_model 16."""
    from huggingface_hub import constants
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory()["llama_scope_lxr_8x"]
    factor = entry.norm_scaling_factor["l0r_8x"]
    cache = tmp_path / "hf-cache"
    repo = cache / ("models--" + entry.repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    norm = math.sqrt(D_IN) / factor
    hp = _hyperparams(hook_point_in="blocks.0.hook_resid_post", hook_point_out="blocks.0.hook_resid_post",
                      dataset_average_activation_norm={"in": norm, "out": norm}, jump_relu_threshold=0.3 / factor)
    return _llama_scope(repo / "snapshots" / ("0" * 40), hp, name=entry.saes_map["l0r_8x"])


def test_the_registry_name_reads_through_this_reader(registry_folder):
    sae = load_sae("saelens:llama_scope_lxr_8x/l0r_8x")
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post" and sae.cfg.metadata["converted_from"] == "llama_scope"
    norm = json.loads((registry_folder / "hyperparams.json").read_text())["dataset_average_activation_norm"]["in"]
    _assert_encodes_as_lm_saes(sae, registry_folder, _inputs(norm))


def test_saelens_converter_agrees_only_when_decoder_norms_are_one(registry_folder):
    """SAELens's converter folds the norm factor and scales the threshold by it, but gates before moving the decoder
    norms into the encoder: with unit decoder norms it fires the same latents (its activations s_in times ours, the
    same reconstruction); with the release's norms ≈ 1.5 it fires others."""
    from sae_lens import SAE as SAELensSAE

    hp = json.loads((registry_folder / "hyperparams.json").read_text())
    x = _inputs(hp["dataset_average_activation_norm"]["in"])
    s_in = math.sqrt(D_IN) / hp["dataset_average_activation_norm"]["in"]
    weights_file = registry_folder / "checkpoints" / "final.safetensors"
    for unit, agrees in ((True, True), (False, False)):
        weights = _weights()
        if unit:
            weights["decoder.weight"] = weights["decoder.weight"] / weights["decoder.weight"].norm(dim=0)
        save_file(weights, str(weights_file))
        theirs = SAELensSAE.from_pretrained("llama_scope_lxr_8x", "l0r_8x", device="cpu", dtype="float32")
        ours = load_sae("saelens:llama_scope_lxr_8x/l0r_8x")
        with torch.no_grad():
            acts_theirs, acts_ours = theirs.encode(x), ours.encode(x)
        assert torch.equal(acts_theirs > 0, acts_ours > 0) is agrees
        if unit:
            torch.testing.assert_close(acts_theirs, acts_ours * s_in, rtol=1e-4, atol=1e-5)
            with torch.no_grad():
                torch.testing.assert_close(theirs.decode(acts_theirs), ours.decode(acts_ours), rtol=1e-4, atol=1e-5)

"""SAE folders: SAELens round trips, older and foreign formats, interop with SAELens and sparsify, bad files."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sae_core
from sae_core.errors import SAEFileError
from sae_core.loading import check_sae_fits, load_sae, save_sae
from sae_core.loading import saelens as saelens_format
from sae_core.saes import ARCHITECTURES, SAE, SAEConfig, SAETrainingOptions, create_training_sae, sae_from_state

D_IN, D_SAE, K = 16, 48, 4
HOOK = "blocks.3.hook_resid_post"


def require(module: str) -> ModuleType:
    """Import a test dependency: skip without it locally, but fail in CI (CI=true), where it must be installed."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def make_sae(arch: str, seed: int = 0) -> SAE:
    cfg = SAEConfig(
        arch, D_IN, D_SAE, k=K if arch == "topk" else None, hook_name=HOOK, model_name="tiny-qwen3",
        context_size=128, dataset_path="corpus.txt", metadata={"training_tokens": 1000},
    )
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5,
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
        "threshold": torch.rand(D_SAE, generator=g) * 0.3,
    }
    return sae_from_state(cfg, tensors)


def inputs(n: int = 20, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


def write_folder(folder: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor], weights: str = "sae_weights.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / weights))
    return folder


def saelens_files(sae: SAE, folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Save with `save_sae` and return the cfg dict and tensors, for tests that edit them."""
    save_sae(sae, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    with safe_open(str(folder / "sae_weights.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return cfg, tensors


# Round trips and the written format -------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_save_load_round_trip(arch: str, tmp_path: Path) -> None:
    training = create_training_sae(
        SAEConfig(arch, D_IN, D_SAE, k=K if arch in ("topk", "batchtopk") else None, hook_name=HOOK, model_name="m"),
        SAETrainingOptions(),
        torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        training.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    sae = training.to_inference(2.5)
    save_sae(sae, tmp_path / "sae", extra_metadata={"training_tokens": 123})
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae)
    for name, t in sae.state_tensors().items():
        assert torch.equal(loaded.state_tensors()[name], t), name
    assert torch.equal(loaded.encode(inputs()), sae.encode(inputs()))
    for field in ("architecture", "d_in", "d_sae", "k", "hook_name", "model_name", "context_size", "dataset_path"):
        assert getattr(loaded.cfg, field) == getattr(sae.cfg, field), field
    assert loaded.cfg.metadata["training_tokens"] == 123
    assert loaded.cfg.metadata["training_architecture"] == arch


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_written_files_are_saelens_6(arch: str, tmp_path: Path) -> None:
    cfg, tensors = saelens_files(make_sae(arch), tmp_path / "sae")
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors.values())
    assert tensors["W_enc"].shape == (D_IN, D_SAE) and tensors["W_dec"].shape == (D_SAE, D_IN)
    assert cfg["architecture"] == arch and cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["dtype"] == "float32" and cfg["device"] == "cpu" and cfg["reshape_activations"] == "none"
    if arch == "topk":
        assert cfg["k"] == K and cfg["rescale_acts_by_decoder_norm"] is False
    else:
        assert "k" not in cfg
    meta = cfg["metadata"]
    assert meta["hook_name"] == HOOK and meta["model_name"] == "tiny-qwen3" and meta["hook_head_index"] is None
    assert meta["sae_lens_version"] == "6.0.0" and meta["sae_explorer_version"] == sae_core.__version__
    assert meta["context_size"] == 128 and meta["dataset_path"] == "corpus.txt" and meta["prepend_bos"] is False


def test_save_replaces_an_older_sae_folder_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "saes" / HOOK
    save_sae(make_sae("topk", seed=0), folder)
    (folder / "metrics.json").write_text("{}")
    newer = make_sae("topk", seed=1)
    save_sae(newer, folder)
    assert torch.equal(load_sae(folder).W_enc, newer.W_enc)
    assert sorted(p.name for p in folder.parent.iterdir()) == [HOOK]  # no temporary folders left
    assert not (folder / "metrics.json").exists()  # the old SAE's metrics went with it

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(saelens_format, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_sae(make_sae("topk", seed=2), folder)
    assert torch.equal(load_sae(folder).W_enc, newer.W_enc)  # the complete older SAE is untouched
    assert sorted(p.name for p in folder.parent.iterdir()) == [HOOK]


def test_save_refuses_to_replace_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SAEFileError, match=r"holds other files \(notes.txt\)"):
        save_sae(make_sae("topk"), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# SAELens options and older configs --------------------------------------------------------


def test_pre_6_topk_config_loads(tmp_path: Path) -> None:
    sae = make_sae("topk")
    old_cfg = {
        "d_in": D_IN, "d_sae": D_SAE, "hook_point": HOOK, "hook_point_layer": 3, "model_name": "gpt2",
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": True,
        "normalize_activations": False, "context_size": 64, "dataset_path": "owt", "prepend_bos": True,
        "sae_lens_training_version": "3.13.0", "dtype": "float32",
    }
    loaded = load_sae(write_folder(tmp_path / "old", old_cfg, sae.state_tensors()))
    assert loaded.cfg.architecture == "topk" and loaded.cfg.k == K
    assert (loaded.cfg.hook_name, loaded.cfg.model_name, loaded.cfg.context_size) == (HOOK, "gpt2", 64)
    assert loaded.cfg.metadata["prepend_bos"] is True
    assert torch.equal(loaded.encode(inputs()), sae.encode(inputs()))


def test_pre_6_relu_config_loads_as_standard(tmp_path: Path) -> None:
    sae = make_sae("standard")
    old_cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": HOOK, "activation_fn_str": "relu", "normalize_activations": "none"}
    loaded = load_sae(write_folder(tmp_path / "old", old_cfg, sae.state_tensors()))
    assert loaded.cfg.architecture == "standard"
    assert torch.equal(loaded.encode(inputs()), sae.encode(inputs()))


def test_apply_b_dec_to_input_false_is_honoured(tmp_path: Path) -> None:
    cfg, tensors = saelens_files(make_sae("standard"), tmp_path / "a")
    cfg["apply_b_dec_to_input"] = False
    loaded = load_sae(write_folder(tmp_path / "b", cfg, tensors))
    x = inputs()
    expected = (x @ tensors["W_enc"] + tensors["b_enc"]).relu()  # b_dec is not subtracted from the input
    torch.testing.assert_close(loaded.encode(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.decode(expected), expected @ tensors["W_dec"] + tensors["b_dec"])


def test_rescale_acts_by_decoder_norm_is_folded(tmp_path: Path) -> None:
    cfg, tensors = saelens_files(make_sae("topk"), tmp_path / "a")
    cfg["rescale_acts_by_decoder_norm"] = True
    tensors["W_dec"] = tensors["W_dec"] * torch.linspace(0.5, 2.0, D_SAE)[:, None]
    loaded = load_sae(write_folder(tmp_path / "b", cfg, tensors))
    x = inputs()
    norms = tensors["W_dec"].norm(dim=1)
    hidden = ((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]) * norms
    values, indices = hidden.topk(K, dim=-1)
    acts = torch.zeros_like(hidden).scatter(-1, indices, values.relu())
    expected = (acts / norms) @ tensors["W_dec"] + tensors["b_dec"]  # SAELens's TopKSAE with rescaling
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_jumprelu_log_threshold_is_accepted(tmp_path: Path) -> None:
    sae = make_sae("jumprelu")
    cfg, tensors = saelens_files(sae, tmp_path / "a")
    tensors["log_threshold"] = tensors.pop("threshold").clamp_min(1e-3).log()
    loaded = load_sae(write_folder(tmp_path / "b", cfg, tensors))
    torch.testing.assert_close(loaded.threshold, sae.threshold.clamp_min(1e-3))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"normalize_activations": "expected_average_only_in"}, "scaling factor that the folder does not store"),
        ({"normalize_activations": True}, "fold_activation_norm_scaling_factor"),
        ({"normalize_activations": "layer_norm"}, "per-token transform"),
        ({"reshape_activations": "hook_z"}, "per-head SAEs"),
        ({"architecture": "gated"}, r"architecture 'gated' is not supported; supported: jumprelu, standard, topk"),
        ({"d_sae": "wide"}, "d_sae must be a positive integer"),
        ({"k": 0}, "k must be a positive integer"),
    ],
)
def test_unsupported_or_bad_saelens_configs(changes: dict[str, Any], message: str, tmp_path: Path) -> None:
    cfg, tensors = saelens_files(make_sae("topk"), tmp_path / "a")
    cfg.update(changes)
    with pytest.raises(SAEFileError, match=message):
        load_sae(write_folder(tmp_path / "b", cfg, tensors))


# Bad folders and files ----------------------------------------------------------------------


def test_missing_folder_or_files(tmp_path: Path) -> None:
    with pytest.raises(SAEFileError, match="does not exist; pass a folder or file of one of: SAELens folder"):
        load_sae(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SAEFileError, match="is a file of no SAE format read here; pass one of: SAELens folder"):
        load_sae(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFileError, match=r"holds no SAE: found nothing, expected one of: SAELens folder \(cfg.json \+ "
                       r"sae_weights.safetensors\)"):
        load_sae(tmp_path / "empty")
    save_sae(make_sae("topk"), tmp_path / "cfg-only")
    (tmp_path / "cfg-only" / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFileError, match=r"found cfg.json, expected .*sparsify folder \(cfg.json \+ sae.safetensors\)"):
        load_sae(tmp_path / "cfg-only")


def test_parent_of_sae_folders_gets_a_hint(tmp_path: Path) -> None:
    save_sae(make_sae("topk"), tmp_path / "run" / "layers.3")
    with pytest.raises(SAEFileError, match=r"it has SAE subfolders \(layers.3\): pass one of them"):
        load_sae(tmp_path / "run")


@pytest.mark.parametrize(
    "text,message",
    [("{not json", r"cfg.json is not valid JSON \(.* at line 1"), ("[1, 2]", "must hold a JSON object")],
)
def test_bad_cfg_json(text: str, message: str, tmp_path: Path) -> None:
    save_sae(make_sae("topk"), tmp_path / "sae")
    (tmp_path / "sae" / "cfg.json").write_text(text)
    with pytest.raises(SAEFileError, match=message):
        load_sae(tmp_path / "sae")


def test_cfg_missing_required_keys(tmp_path: Path) -> None:
    cfg, tensors = saelens_files(make_sae("topk"), tmp_path / "a")
    for key in ("d_in", "d_sae", "k"):
        del cfg[key]
    with pytest.raises(SAEFileError, match=r"lacks required key\(s\) d_in, d_sae, k"):
        load_sae(write_folder(tmp_path / "b", cfg, tensors))


@pytest.mark.parametrize("keep", [100, 0])
def test_truncated_or_corrupt_safetensors(keep: int, tmp_path: Path) -> None:
    save_sae(make_sae("topk"), tmp_path / "sae")
    path = tmp_path / "sae" / "sae_weights.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep else b"\xff" * 64)
    with pytest.raises(SAEFileError, match=r"sae_weights.safetensors is corrupt or truncated .*re-save or re-download"):
        load_sae(tmp_path / "sae")


def test_missing_tensor_or_wrong_shape(tmp_path: Path) -> None:
    cfg, tensors = saelens_files(make_sae("jumprelu"), tmp_path / "a")
    del tensors["threshold"]
    with pytest.raises(SAEFileError, match=r"lacks tensor\(s\) threshold \(found: W_dec, W_enc, b_dec, b_enc\)"):
        load_sae(write_folder(tmp_path / "b", cfg, tensors))
    cfg, tensors = saelens_files(make_sae("topk"), tmp_path / "c")
    tensors["W_enc"] = tensors["W_enc"][:, :10]
    with pytest.raises(SAEFileError, match=r"tensor W_enc has shape \(16, 10\) but cfg.json \(d_in=16, d_sae=48\) implies \(16, 48\)"):
        load_sae(write_folder(tmp_path / "d", cfg, tensors))
    tensors["W_enc"] = torch.full((D_IN, D_SAE), float("nan"))
    with pytest.raises(SAEFileError, match="W_enc holds NaN"):
        load_sae(write_folder(tmp_path / "e", cfg, tensors))


def test_check_sae_fits() -> None:
    sae = make_sae("topk")
    check_sae_fits(sae, D_IN)
    with pytest.raises(SAEFileError, match=f"SAE d_in 16 does not match the model's width 576 at {HOOK}"):
        check_sae_fits(sae, 576)


# sparsify folders -------------------------------------------------------------------------


def sparsify_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g),
        "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
    }


def test_sparsify_folder_without_the_library(tmp_path: Path) -> None:
    t = sparsify_tensors()
    folder = write_folder(
        tmp_path / "run" / "layers.5.mlp",
        {"activation": "topk", "expansion_factor": 3, "num_latents": 0, "k": K, "d_in": D_IN, "transcode": False},
        t,
        weights="sae.safetensors",
    )
    (tmp_path / "run" / "config.json").write_text(json.dumps({"sae": {}, "model": "EleutherAI/pythia-70m", "ctx_len": 256}))
    sae = load_sae(folder)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K and sae.cfg.d_sae == D_SAE
    assert sae.cfg.hook_name == "blocks.5.hook_mlp_out"
    assert sae.cfg.metadata["sparsify_hookpoint"] == "layers.5.mlp"
    assert (sae.cfg.model_name, sae.cfg.context_size) == ("EleutherAI/pythia-70m", 256)
    x = inputs()
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    values, indices = pre.topk(K, dim=-1)
    torch.testing.assert_close(sae.encode(x), torch.zeros_like(pre).scatter(-1, indices, values))


def test_sparsify_unknown_hookpoint_keeps_the_raw_name(tmp_path: Path) -> None:
    cfg = {"activation": "topk", "num_latents": D_SAE, "k": K, "d_in": D_IN}
    sae = load_sae(write_folder(tmp_path / "my_sae", cfg, sparsify_tensors(), weights="sae.safetensors"))
    assert sae.cfg.hook_name == "" and sae.cfg.metadata["sparsify_hookpoint"] == "my_sae"


@pytest.mark.parametrize(
    "changes,extra,message",
    [
        ({"activation": "groupmax"}, {}, "activation 'groupmax' is not supported"),
        ({"transcode": True}, {}, "transcoders .* are not supported"),
        ({"skip_connection": True}, {}, "skip connections .* are not supported"),
        ({}, {"W_skip": torch.zeros(D_IN, D_IN)}, r"skip connection \(W_skip\)"),
        ({"d_in": None}, {}, "d_in must be a positive integer"),
        ({"num_latents": 40}, {}, r"encoder.weight has shape \(48, 16\) but cfg.json \(d_in=16, 40 latents\) implies \(40, 16\)"),
    ],
)
def test_sparsify_unsupported_or_bad(changes: dict[str, Any], extra: dict[str, torch.Tensor], message: str, tmp_path: Path) -> None:
    cfg = {"activation": "topk", "num_latents": D_SAE, "k": K, "d_in": D_IN, **changes}
    folder = write_folder(tmp_path / "layers.1", cfg, {**sparsify_tensors(), **extra}, weights="sae.safetensors")
    with pytest.raises(SAEFileError, match=message):
        load_sae(folder)


def test_sparsify_missing_keys(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "layers.1", {"activation": "topk"}, sparsify_tensors(), weights="sae.safetensors")
    with pytest.raises(SAEFileError, match=r"lacks required key\(s\) d_in, k"):
        load_sae(folder)


# Interop with the real libraries ----------------------------------------------------------


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_saelens_loads_our_folders(arch: str, tmp_path: Path) -> None:
    sae_lens = require("sae_lens")
    ours = make_sae(arch)
    save_sae(ours, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    assert theirs.cfg.architecture() == arch and theirs.cfg.metadata.hook_name == HOOK
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x))
        acts = ours.encode(x)
        torch.testing.assert_close(theirs.decode(acts), ours.decode(acts))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.3 if name == "threshold" else torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_we_load_folders_saved_by_saelens(arch: str, apply_b_dec_to_input: bool, tmp_path: Path) -> None:
    sae_lens = require("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    classes = {
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": K}),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
    }
    cls, cfg_cls, extra = classes[arch]
    cfg = cfg_cls(
        d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec_to_input,
        metadata=SAEMetadata(hook_name=HOOK, model_name="gpt2"), **extra,
    )
    theirs = cls(cfg)
    _randomise(theirs, seed=3)
    theirs.save_model(str(tmp_path / "sae"))
    ours = load_sae(tmp_path / "sae")
    assert ours.cfg.architecture == arch and ours.cfg.hook_name == HOOK and ours.cfg.model_name == "gpt2"
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_we_load_folders_saved_by_sparsify(tmp_path: Path) -> None:
    sparsify = require("sparsify")
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K))
    _randomise(coder, seed=4)
    coder.save_to_disk(tmp_path / "layers.2")
    ours = load_sae(tmp_path / "layers.2")
    assert ours.cfg.architecture == "topk" and ours.cfg.hook_name == "blocks.2.hook_resid_post"
    x = inputs()
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(x)
        dense = torch.zeros(x.shape[0], D_SAE).scatter(-1, top_indices, top_acts)
        torch.testing.assert_close(ours.encode(x), dense)
        torch.testing.assert_close(ours.decode(dense), coder.decode(top_acts, top_indices), rtol=1e-5, atol=1e-5)

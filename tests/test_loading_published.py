"""Published SAEs of other libraries: dictionary_learning (`ae.pt` + config.json), Gemma Scope (`params.npz`) and Qwen
Scope (`layerN.sae.pt`). dictionary_learning files are written by the library's own classes (installed by `make test`)
and read back against their encode; the other files are laid out as their libraries write them (state-dict names
and shapes, `torch.save` / `np.savez`) and compared with the encode written out below. Bad files give one-line errors;
a `.pt` holding anything but tensors is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from sae_core.errors import SAEFileError
from sae_core.loading import load_sae
from sae_core.runs.import_saes import import_saes, split_site

D_IN, D_SAE, K = 16, 40, 5


def _randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


X = _randn(64, D_IN, seed=99, scale=2.0)


def _dl_folder(root: Path, dict_class: str, state: dict[str, Tensor], submodule: str = "resid_post_layer_1") -> Path:
    """A dictionary_learning save: `trainer_0/ae.pt` (torch.save of the state dict) and its config.json."""
    folder = root / submodule / "trainer_0"
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    config = {"trainer": {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": D_SAE, "k": K,
                          "layer": 1, "lm_name": "Qwen/Qwen3-1.7B", "submodule_name": submodule},
              "buffer": {"d_submodule": D_IN, "io": "out"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _linear_state(seed: int) -> dict[str, Tensor]:
    """nn.Linear encoder (d_sae, d_in) + bias, nn.Linear decoder without bias (d_in, d_sae), as the TopK classes hold."""
    return {"encoder.weight": _randn(D_SAE, D_IN, seed=seed, scale=0.3), "encoder.bias": _randn(D_SAE, seed=seed + 1, scale=0.2),
            "decoder.weight": _randn(D_IN, D_SAE, seed=seed + 2, scale=0.3), "b_dec": _randn(D_IN, seed=seed + 3, scale=0.5)}


def test_dictionary_learning_topk_encodes_as_autoencodertopk(tmp_path):
    state = {**_linear_state(1), "k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.7)}
    sae = load_sae(_dl_folder(tmp_path, "AutoEncoderTopK", state))
    post = torch.relu((X - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])  # AutoEncoderTopK.encode
    top = post.topk(K, dim=-1)
    expected = torch.zeros_like(post).scatter_(-1, top.indices, top.values)  # (the threshold is unused by default)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.model_name == "Qwen/Qwen3-1.7B"
    torch.testing.assert_close(sae.encode(X), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(expected), expected @ state["decoder.weight"].T + state["b_dec"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.4, -1.0])
def test_dictionary_learning_batchtopk_encodes_with_its_threshold(tmp_path, threshold):
    state = {**_linear_state(2), "k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold)}
    sae = load_sae(_dl_folder(tmp_path, "BatchTopKSAE", state, submodule="mlp_out_layer_0"))
    post = torch.relu((X - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    expected = post * (post > threshold)  # BatchTopKSAE.encode(use_threshold=True), its default
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.hook_name == "blocks.0.hook_mlp_out"
    torch.testing.assert_close(sae.encode(X), expected, rtol=1e-5, atol=1e-5)


def test_dictionary_learning_jumprelu_and_matryoshka(tmp_path):
    jump = {"W_enc": _randn(D_IN, D_SAE, seed=3, scale=0.3), "b_enc": _randn(D_SAE, seed=4, scale=0.2),
            "W_dec": _randn(D_SAE, D_IN, seed=5, scale=0.3), "b_dec": _randn(D_IN, seed=6), "threshold": torch.rand(D_SAE) * 0.5}
    sae = load_sae(_dl_folder(tmp_path / "j", "JumpReluAutoEncoder", jump))
    pre = X @ jump["W_enc"] + jump["b_enc"]  # apply_b_dec_to_input is False in the saved class
    torch.testing.assert_close(sae.encode(X), torch.relu(pre * (pre > jump["threshold"])), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(X)), sae.encode(X) @ jump["W_dec"] + jump["b_dec"], rtol=1e-5, atol=1e-5)

    matryoshka = {**{k: v for k, v in jump.items() if k != "threshold"}, "k": torch.tensor(K, dtype=torch.int),
                  "threshold": torch.tensor(0.3), "group_sizes": torch.tensor([8, 32])}
    sae = load_sae(_dl_folder(tmp_path / "m", "MatryoshkaBatchTopKSAE", matryoshka))
    post = torch.relu((X - jump["b_dec"]) @ jump["W_enc"] + jump["b_enc"])
    torch.testing.assert_close(sae.encode(X), post * (post > 0.3), rtol=1e-5, atol=1e-5)


def test_dictionary_learning_standard_is_normalised_as_from_pretrained(tmp_path):
    state = {"bias": _randn(D_IN, seed=7), "encoder.weight": _randn(D_SAE, D_IN, seed=8, scale=0.3),
             "encoder.bias": _randn(D_SAE, seed=9, scale=0.2), "decoder.weight": _randn(D_IN, D_SAE, seed=10, scale=0.3)}
    sae = load_sae(_dl_folder(tmp_path, "AutoEncoder", state))
    raw = torch.relu((X - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])  # AutoEncoder.encode
    norms = state["decoder.weight"].norm(dim=0)  # from_pretrained(normalize_decoder=True) scales latents by these
    torch.testing.assert_close(sae.encode(X), raw * norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(X)), raw @ state["decoder.weight"].T + state["bias"], rtol=1e-4, atol=1e-4)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


def test_dictionary_learning_without_config_or_of_an_unknown_class(tmp_path):
    state = {"bias": _randn(D_IN, seed=7), "encoder.weight": _randn(D_SAE, D_IN, seed=8),
             "encoder.bias": _randn(D_SAE, seed=9), "decoder.weight": _randn(D_IN, D_SAE, seed=10)}
    folder = _dl_folder(tmp_path / "a", "AutoEncoder", state)
    (folder / "config.json").unlink()
    assert load_sae(folder).cfg.architecture == "standard" and load_sae(folder).cfg.hook_name == ""
    folder = _dl_folder(tmp_path / "b", "AutoEncoderTopK", {**_linear_state(1), "k": torch.tensor(K)})
    (folder / "config.json").unlink()
    with pytest.raises(SAEFileError, match="cannot tell the SAE class from its tensors .*keep the config.json"):
        load_sae(folder)
    folder = _dl_folder(tmp_path / "c", "GatedAutoEncoder", state)
    with pytest.raises(SAEFileError, match="class 'GatedAutoEncoder' is not supported; supported: AutoEncoder"):
        load_sae(folder)
    folder = _dl_folder(tmp_path / "d", "BatchTopKSAE", _linear_state(1))
    with pytest.raises(SAEFileError, match=r"lacks tensor\(s\) threshold"):
        load_sae(folder)


class NotATensor:
    pass


@pytest.mark.parametrize("content, message", [
    (lambda: {"encoder.weight": NotATensor()}, "is not a plain state dict of tensors"),
    (lambda: [torch.zeros(2)], "holds list, expected a state dict of tensors"),
    (lambda: {"encoder.weight": torch.zeros(2), "step": 3}, "holds a dict with non-tensor values"),
])
def test_a_pt_file_holding_anything_but_tensors_is_refused(tmp_path, content, message):
    folder = tmp_path / "sae"
    folder.mkdir()
    torch.save(content(), folder / "ae.pt")
    with pytest.raises(SAEFileError, match=message):
        load_sae(folder)


def test_a_truncated_pt_file_is_a_clear_error(tmp_path):
    folder = _dl_folder(tmp_path, "AutoEncoderTopK", {**_linear_state(1), "k": torch.tensor(K)})
    data = (folder / "ae.pt").read_bytes()
    (folder / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEFileError, match="ae.pt is not a plain state dict of tensors"):
        load_sae(folder)


def _gemma_scope(root: Path, repo: str = "gemma-scope-2b-pt-res", **changes) -> Path:
    """`REPO/layer_1/width_16k/average_l0_9/params.npz`, as Gemma Scope ships (np.savez of float32 arrays)."""
    folder = root / repo / "layer_1" / "width_16k" / "average_l0_9"
    folder.mkdir(parents=True)
    params = {"W_enc": _randn(D_IN, D_SAE, seed=11, scale=0.3), "b_enc": _randn(D_SAE, seed=12, scale=0.2),
              "W_dec": _randn(D_SAE, D_IN, seed=13, scale=0.3), "b_dec": _randn(D_IN, seed=14),
              "threshold": torch.rand(D_SAE, generator=torch.Generator().manual_seed(15)) * 0.5}
    arrays = {name: t.numpy() for name, t in params.items()} | changes
    np.savez(folder / "params.npz", **arrays)
    return folder


def test_gemma_scope_encodes_as_its_jumprelu(tmp_path):
    folder = _gemma_scope(tmp_path)
    with np.load(folder / "params.npz") as p:
        W_enc, b_enc, W_dec, b_dec, threshold = (torch.from_numpy(p[n]) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"))
    pre = X @ W_enc + b_enc  # Gemma Scope: no b_dec on the input
    expected = torch.relu(pre) * (pre > threshold)
    for path in (folder, folder / "params.npz"):
        sae = load_sae(path)
        assert sae.cfg.architecture == "jumprelu" and sae.cfg.hook_name == "blocks.1.hook_resid_post"
        torch.testing.assert_close(sae.encode(X), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(expected), expected @ W_dec + b_dec, rtol=1e-5, atol=1e-5)
    assert load_sae(_gemma_scope(tmp_path / "m", "gemma-scope-9b-it-mlp")).cfg.hook_name == "blocks.1.hook_mlp_out"


def test_gemma_scope_refusals(tmp_path):
    with pytest.raises(SAEFileError, match="attention SAEs read hook_z"):
        load_sae(_gemma_scope(tmp_path / "a", "gemma-scope-2b-pt-att"))
    with pytest.raises(SAEFileError, match="tensor W_enc has shape"):
        load_sae(_gemma_scope(tmp_path / "b", W_enc=np.zeros((D_IN + 1, D_SAE), np.float32)))
    with pytest.raises(SAEFileError, match="not a readable .npz of numeric arrays"):
        load_sae(_gemma_scope(tmp_path / "c", threshold=np.array([{"a": 1}], dtype=object)))
    folder = _gemma_scope(tmp_path / "d")
    (folder / "params.npz").write_bytes((folder / "params.npz").read_bytes()[:100])
    with pytest.raises(SAEFileError, match="not a readable .npz"):
        load_sae(folder)


def _qwen_scope(root: Path, repo: str = "models--Qwen--SAE-Res-Qwen3-1.7B-Base-W1K-L0_5") -> Path:
    """A Qwen Scope checkpoint under the Hugging Face cache's folder for its repository."""
    folder = root / repo / "snapshots" / "abc123"
    folder.mkdir(parents=True)
    state = {"W_enc": _randn(D_SAE, D_IN, seed=21, scale=0.3), "W_dec": _randn(D_IN, D_SAE, seed=22, scale=0.3),
             "b_enc": _randn(D_SAE, seed=23, scale=0.2), "b_dec": _randn(D_IN, seed=24)}
    torch.save(state, folder / "layer1.sae.pt")
    return folder / "layer1.sae.pt"


def test_qwen_scope_encodes_as_its_topk(tmp_path):
    path = _qwen_scope(tmp_path)
    state = torch.load(path, weights_only=True)
    post = torch.relu(X @ state["W_enc"].T + state["b_enc"])  # no b_dec on the input
    top = post.topk(5, dim=-1)
    expected = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
    sae = load_sae(path)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name) == ("topk", 5, "blocks.1.hook_resid_post")
    torch.testing.assert_close(sae.encode(X), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(expected), expected @ state["W_dec"].T + state["b_dec"], rtol=1e-5, atol=1e-5)
    with pytest.raises(SAEFileError, match="cannot tell k"):
        load_sae(_qwen_scope(tmp_path / "x", repo="elsewhere"))


def test_import_takes_any_format_and_a_site_after_the_path(tmp_path, tiny_loaded):
    """A Gemma Scope file whose path names no site gets one from `=SITE`; the run holds SAELens folders."""
    folder = _gemma_scope(tmp_path, repo="my-copy", W_enc=np.zeros((64, D_SAE), np.float32),
                          W_dec=np.zeros((D_SAE, 64), np.float32), b_dec=np.zeros(64, np.float32))
    with pytest.raises(SAEFileError, match="cannot tell which site this SAE reads .*=L6R"):
        import_saes([folder], tmp_path / "run", tiny_loaded, model=None, log=lambda m: None)
    run = import_saes([f"{folder / 'params.npz'}=L0M"], tmp_path / "run", tiny_loaded, model=None, log=lambda m: None)
    reloaded = load_sae(run.path / "saes" / "blocks.0.hook_mlp_out")
    assert reloaded.cfg.architecture == "jumprelu" and reloaded.cfg.metadata["converted_from"] == "gemma_scope"
    assert split_site("a=b/c.npz=L1R") == (Path("a=b/c.npz"), "L1R") and split_site("plain") == (Path("plain"), None)


def test_import_can_set_the_outlier_threshold_a_published_sae_was_trained_with(tmp_path, tiny_loaded, tiny_corpus):
    """`outlier_factor` records factor × the median activation norm at each site (measured on the corpus) with SAEs
    that carry no threshold; our own SAEs keep theirs."""
    from sae_core.activations.harvest import harvest_chunks
    from sae_core.activations.outliers import outlier_threshold
    from sae_core.loading import save_sae
    from sae_core.model.sites import parse_site
    from sae_core.runs.import_saes import SAMPLE_TOKENS
    from sae_core.text.corpus import iter_documents
    from sae_core.text.tokens import token_batches

    published = _gemma_scope(tmp_path, repo="copy", W_enc=np.zeros((64, D_SAE), np.float32),
                             W_dec=np.zeros((D_SAE, 64), np.float32), b_dec=np.zeros(64, np.float32))
    ours = load_sae(published / "params.npz")
    ours.cfg.metadata["outlier_norm_threshold"] = 123.0
    save_sae(ours.__class__(ours.cfg.replace(hook_name="blocks.1.hook_resid_post")).load_tensors(
        {n: getattr(ours, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}), tmp_path / "ours")
    run = import_saes([f"{published}=L0R", tmp_path / "ours"], tmp_path / "run", tiny_loaded, model=None,
                      corpus=str(tiny_corpus), context_size=32, outlier_factor=10.0, log=lambda m: None)
    site = parse_site("L0R")
    sample = next(harvest_chunks(tiny_loaded, [site], token_batches(iter_documents(str(tiny_corpus), "train"),
                                                                  tiny_loaded.tokenizer, 32, 8), SAMPLE_TOKENS))
    median = float(sample.acts[site].norm(dim=-1).median())
    imported = load_sae(run.path / "saes" / site.hook_name)
    assert outlier_threshold(imported) == pytest.approx(10 * median, rel=1e-6)
    assert imported.cfg.metadata["outlier_factor"] == 10.0
    assert outlier_threshold(load_sae(run.path / "saes" / "blocks.1.hook_resid_post")) == 123.0


def _dictionary_learning():
    """dictionary_learning's own modules (installed without its heavy dependencies by `make test`; its package
    `__init__` imports nnsight, so the package is opened without running it). Required in CI."""
    import importlib
    import importlib.util
    import os
    import sys
    import types

    if "dictionary_learning" not in sys.modules:
        spec = importlib.util.find_spec("dictionary_learning")
        if spec is None:
            if os.environ.get("CI") == "true":
                raise AssertionError("dictionary-learning is not installed (make test installs it with --no-deps)")
            pytest.skip("dictionary-learning is not installed: pip install --no-deps dictionary-learning==0.1.0")
        package = types.ModuleType("dictionary_learning")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["dictionary_learning"] = package
    return types.SimpleNamespace(
        dictionary=importlib.import_module("dictionary_learning.dictionary"),
        top_k=importlib.import_module("dictionary_learning.trainers.top_k"),
        batch_top_k=importlib.import_module("dictionary_learning.trainers.batch_top_k"),
        matryoshka=importlib.import_module("dictionary_learning.trainers.matryoshka_batch_top_k"),
    )


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE",
                                        "JumpReluAutoEncoder"])
def test_files_written_by_dictionary_learning_encode_as_its_classes(dict_class, tmp_path):
    dl = _dictionary_learning()
    make = {
        "AutoEncoder": lambda: dl.dictionary.AutoEncoder(D_IN, D_SAE),
        "AutoEncoderTopK": lambda: dl.top_k.AutoEncoderTopK(D_IN, D_SAE, K),
        "BatchTopKSAE": lambda: dl.batch_top_k.BatchTopKSAE(D_IN, D_SAE, K),
        "MatryoshkaBatchTopKSAE": lambda: dl.matryoshka.MatryoshkaBatchTopKSAE(D_IN, D_SAE, K, [8, D_SAE - 8]),
        "JumpReluAutoEncoder": lambda: dl.dictionary.JumpReluAutoEncoder(D_IN, D_SAE),
    }
    cls = {"AutoEncoder": dl.dictionary.AutoEncoder, "AutoEncoderTopK": dl.top_k.AutoEncoderTopK,
           "BatchTopKSAE": dl.batch_top_k.BatchTopKSAE, "MatryoshkaBatchTopKSAE": dl.matryoshka.MatryoshkaBatchTopKSAE,
           "JumpReluAutoEncoder": dl.dictionary.JumpReluAutoEncoder}[dict_class]
    ae = make[dict_class]()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in ae.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.4 if name == "threshold" else torch.randn(p.shape, generator=g) * 0.3)
        if hasattr(ae, "threshold") and not isinstance(ae.threshold, torch.nn.Parameter):
            ae.threshold.fill_(0.35)  # the inference threshold BatchTopK training leaves in the buffer
    folder = tmp_path / "resid_post_layer_2" / "trainer_0"
    folder.mkdir(parents=True)
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")  # as dictionary_learning's training saves
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "submodule_name": "resid_post_layer_2"}}))
    theirs = cls.from_pretrained(folder / "ae.pt")
    ours = load_sae(folder)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(X), theirs.encode(X), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(X)), theirs.decode(theirs.encode(X)), rtol=1e-4, atol=1e-4)
    assert ours.cfg.hook_name == "blocks.2.hook_resid_post"

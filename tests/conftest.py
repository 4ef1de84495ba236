"""Shared fixtures: a tiny saved model directory and a tiny text corpus (no network)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sae_core.tiny import tiny_model, tiny_tokenizer

_WORDS = (
    "the a model feature sparse token layer river mountain city music science history ocean "
    "language learning light dark quickly slowly because although table window garden planet "
    "energy market story child teacher doctor engine road bridge forest winter summer paper"
).split()


def make_text(n_docs: int, seed: int = 0, words_per_doc: int = 60) -> list[str]:
    """Deterministic pseudo-English documents."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(words_per_doc // 10):
            sentence = " ".join(rng.choice(_WORDS) for _ in range(10))
            sentences.append(sentence.capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer tiny Qwen3 with its tokenizer, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_model("qwen3", n_layers=2, d_model=64).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A .txt corpus of ~1,000 short documents separated by blank lines."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(make_text(1000)), encoding="utf-8")
    return path

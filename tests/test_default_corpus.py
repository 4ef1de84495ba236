"""The embedded default corpus that ships in data/corpus: size, splits, sources, chat records."""

from __future__ import annotations

import itertools
import json

from sae_core.testing.tiny_models import tiny_tokenizer
from sae_core.text.corpus import default_corpus_dir, describe_source, iter_documents
from sae_core.text.tokens import render_chat

SOURCES = {"sotu", "moby_dick", "email", "python_docs", "chat_selfgen"}


def test_manifest_promises_at_least_a_million_tokens_and_a_real_eval_split():
    manifest = json.loads((default_corpus_dir() / "MANIFEST.json").read_text())
    assert manifest["total"]["tokens"] >= 1_000_000
    assert manifest["splits"]["eval"]["tokens"] >= 50_000
    assert set(manifest["sources"]) == SOURCES
    assert "4 shards" in describe_source(None)


def test_stream_is_mixed_from_the_start_and_splits_are_disjoint():
    first = list(itertools.islice(iter_documents(None, "train"), 300))
    assert {d.source for d in first} == SOURCES
    eval_docs = list(iter_documents(None, "eval"))
    assert 100 <= len(eval_docs) <= 200
    train_ids = {d.doc_id for d in iter_documents(None, "train")}
    assert not train_ids & {d.doc_id for d in eval_docs}


def test_chat_records_render_with_a_chat_template():
    chats = [d for d in itertools.islice(iter_documents(None, "all"), 400) if d.messages is not None]
    assert chats
    tokenizer = tiny_tokenizer()
    for doc in chats[:20]:
        text = render_chat(doc.messages, tokenizer)
        assert "<|im_start|>user" in text and "<|im_start|>assistant" in text

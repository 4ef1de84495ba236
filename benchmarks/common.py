"""Helpers shared by the benchmark scripts: models, random batches, the plain-forward baseline, timing."""

from __future__ import annotations

import time

import torch

from sae_core.model.load import LoadedModel, load_model
from sae_core.text.tokens import TokenBatch, real_token_mask


def tiny_or_embedded(name: str | None) -> LoadedModel:
    """The embedded model (None), a tiny random Qwen3 ('tiny', for smoke tests) or any model id / path."""
    if name == "tiny":
        import tempfile

        from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer

        path = tempfile.mkdtemp()
        tiny_model("qwen3", n_layers=4, d_model=64).save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
        return load_model(path)
    return load_model(name)


def random_batch(tokenizer, batch: int, context: int, seed: int) -> TokenBatch:
    """Random token ids `(batch, context)` (the cost of a forward does not depend on the text)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, len(tokenizer), (batch, context), generator=g)
    return TokenBatch(ids, torch.ones_like(ids), real_token_mask(ids, tokenizer.all_special_ids))


@torch.no_grad()
def plain_forward(loaded, batch: TokenBatch, deepest: int) -> None:
    """The model's own layers up to `deepest`, with nothing captured: a truncated copy of the layer list."""
    layers = loaded.layout.layers
    kept = torch.nn.ModuleList(list(layers)[: deepest + 1])
    parent = loaded.layout.base_model
    name = next(n for n, m in parent.named_children() if m is layers)
    setattr(parent, name, kept)
    try:
        parent(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        setattr(parent, name, layers)


def timed(fn, tokens: int) -> float:
    """Tokens per second of one call of `fn` that processes `tokens` tokens."""
    start = time.perf_counter()
    fn()
    return tokens / (time.perf_counter() - start)



"""From documents to token contexts: render chat, tokenize, pack into fixed-length contexts, mask specials."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from sae_core.errors import CorpusError, UserError
from sae_core.text.corpus import Document

TOKENIZE_BATCH = 64
"""Documents tokenized per call: the fast tokenizer encodes a batch in parallel."""


class TokenBatch(NamedTuple):
    """A batch of packed contexts, ready for the LM forward."""

    input_ids: Tensor
    """Token ids, `(B, T)` long."""

    attention_mask: Tensor
    """1 where a token is present, 0 at padding, `(B, T)` long."""

    real: Tensor
    """True at real text tokens; False at position 0, at special tokens and at padding. `(B, T)` bool."""


def render_chat(messages: Sequence[dict], tokenizer: PreTrainedTokenizerBase, *, add_generation_prompt: bool = False,
                hint: str = "use a model with a chat template or a corpus of plain text",
                error: type[UserError] = CorpusError) -> str:
    """Messages as text in the model's own chat template (with its role markers), ending where the assistant's
    answer starts when `add_generation_prompt`. The one place a chat template is applied; without one, `error`
    says so with `hint` (what to do instead)."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not getattr(tokenizer, "chat_template", None):
        raise error(f"the tokenizer of {name} has no chat template; {hint}")
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja raises its own errors (e.g. roles must alternate)
        raise error(f"the chat template of {name} rejected the messages ({e}); fix their roles and order") from None


def user_turn(tokenizer: PreTrainedTokenizerBase, message: str, *, hint: str, error: type[UserError] = UserError) -> str:
    """`message` as a user turn in the chat template, ending where the assistant's answer starts."""
    return render_chat([{"role": "user", "content": message}], tokenizer, add_generation_prompt=True, hint=hint, error=error)


_NOTICED: set[str] = set()


def _notice_plain_chat(tokenizer: PreTrainedTokenizerBase) -> None:
    """Say once per tokenizer that chat records are read as plain text (a base model has no chat template)."""
    name = str(getattr(tokenizer, "name_or_path", "") or "this model")
    if name not in _NOTICED:
        _NOTICED.add(name)
        print(f"note: {name} has no chat template, so chat records are read as plain text (\"User: …\" and "
              "\"Assistant: …\" turns separated by blank lines; docs/corpus.md)", file=sys.stderr, flush=True)


def plain_chat(messages: Sequence[dict]) -> str:
    """A chat record as plain text ("User: …" turns separated by blank lines), for models without a chat template."""
    return "\n\n".join(f"{str(m.get('role', 'user')).capitalize()}: {m.get('content', '')}" for m in messages)


def document_ids(doc: Document, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of one document: text with the tokenizer's usual specials (e.g. BOS), chat as templated.

    A model without a chat template (a base model) reads chat records as plain text (`plain_chat`).
    """
    return _encode([doc], tokenizer)[0]


def decode_each(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own, as the text that token shows (e.g. " the")."""
    return tokenizer.batch_decode([[int(i)] for i in ids])


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids never counted as real text: `all_special_ids` plus every added token marked special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special)
    return sorted(ids)


def context_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """`[BOS]` for a tokenizer that starts every text with BOS (Gemma, Llama 3), else `[]`.

    Such models saw BOS at position 0 throughout training and degrade without it (Gemma 3 270M on the
    default corpus: 4.5 nats of next-token loss on packed contexts, 3.1 with BOS first), so every packed
    context starts with it, as SAELens's `prepend_bos` does.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids[:1] == [bos] else []


def pack_contexts(
    docs: Iterable[Document], tokenizer: PreTrainedTokenizerBase, context_size: int
) -> Iterator[Tensor]:
    """Concatenate documents, each followed by EOS (if any), and cut them into `(context_size,)` contexts,
    each starting with `context_prefix` (BOS where the model expects it; a document's own leading BOS is dropped).

    Contexts come in order and the remainder at the end is dropped, so the output is deterministic.
    """
    prefix = context_prefix(tokenizer)
    body = context_size - len(prefix)
    if body < 1:
        raise ValueError(f"context_size must be more than {len(prefix)}, got {context_size}")
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    buffer: list[int] = []
    docs = iter(docs)
    while chunk := list(islice(docs, TOKENIZE_BATCH)):
        for ids in _encode(chunk, tokenizer):
            buffer.extend(ids[len(prefix):] if prefix and ids[: len(prefix)] == prefix else ids)
            buffer.extend(separator)
        n_full = len(buffer) // body
        if n_full:
            packed = torch.tensor(buffer[: n_full * body], dtype=torch.long).view(n_full, body)
            if prefix:
                packed = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(n_full, -1), packed], dim=1)
            yield from packed.unbind(0)
            del buffer[: n_full * body]


def real_token_mask(
    input_ids: Tensor, special_ids: Sequence[int] | Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """True where a token is real text: not position 0, not a special id, not padding; `input_ids`' shape.

    Position 0 (and, with `attention_mask`, each row's first attended token) is an attention sink with
    outlier activations, so it is always False.
    """
    special = torch.as_tensor(list(special_ids) if not isinstance(special_ids, Tensor) else special_ids)
    real = ~torch.isin(input_ids, special.to(device=input_ids.device, dtype=input_ids.dtype))
    real[..., 0] = False
    if attention_mask is not None:
        attended = attention_mask.bool()
        first = attended & (attended.long().cumsum(-1) == 1)
        real &= attended & ~first
    return real


def token_batches(
    docs: Iterable[Document], tokenizer: PreTrainedTokenizerBase, context_size: int, batch_size: int
) -> Iterator[TokenBatch]:
    """Packed contexts in batches of `batch_size` (the last one may be smaller): `(B, context_size)` each."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    contexts = pack_contexts(docs, tokenizer, context_size)
    while rows := list(islice(contexts, batch_size)):
        input_ids = torch.stack(rows)
        attention_mask = torch.ones_like(input_ids)
        yield TokenBatch(input_ids, attention_mask, real_token_mask(input_ids, special, attention_mask))


def check_context_size(context_size: int, max_positions: int | None, model_name: str) -> None:
    """Refuse a context size the model cannot take (or one too short to hold a real token) with the fix."""
    if context_size < 2:
        raise UserError(
            f"context size {context_size} is too small (position 0 is never a real token); "
            "pass --context-size 2 or more, e.g. 128"
        )
    if max_positions is not None and context_size > max_positions:
        raise UserError(
            f"context size {context_size} is above {model_name}'s maximum of {max_positions} positions; "
            f"pass --context-size {max_positions} or less"
        )


def _encode(docs: Sequence[Document], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids of each document, in order; text and chat documents are each tokenized in one call."""
    out: list[list[int]] = [[] for _ in docs]
    templated = bool(getattr(tokenizer, "chat_template", None))
    texts = [i for i, d in enumerate(docs) if d.text is not None or not templated]
    chats = [i for i, d in enumerate(docs) if d.messages is not None and templated]
    if not templated and any(d.messages is not None for d in docs):
        _notice_plain_chat(tokenizer)
    # verbose=False: a document longer than the model's maximum is fine, since packing cuts it.
    if texts:
        plain = [docs[i].text if docs[i].text is not None else plain_chat(docs[i].messages or ()) for i in texts]
        ids = tokenizer(plain, add_special_tokens=True, verbose=False)["input_ids"]
        for i, row in zip(texts, ids, strict=True):
            out[i] = list(row)
    if chats:
        rendered = [render_chat(docs[i].messages, tokenizer) for i in chats]
        # The template already holds its markers (BOS included where the model uses one).
        ids = tokenizer(rendered, add_special_tokens=False, verbose=False)["input_ids"]
        for i, row in zip(chats, ids, strict=True):
            out[i] = list(row)
    return out

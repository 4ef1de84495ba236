"""Batched greedy chat generation with per-row edits, and how surprising an answer is to the plain model.

Prompts are rendered as one user message in the model's chat template, sorted by length and left-padded
into batches. Each row may carry its own edit of one site's activation (steering, ablation, or none),
applied at every position, the prompt's and the generated tokens', so many conditions of a study share
each batch (large batches are what make CPU generation fast).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..devices import module_device
from ..model.hooks import splice
from ..model.load import LoadedModel
from ..model.sites import Site
from ..text.tokens import user_turn

RowEdit = Callable[[Tensor], Tensor]
"""Maps one row's site activation `(..., T, d)` to its edited value."""


@contextlib.contextmanager
def row_edits(loaded: LoadedModel, site: Site, edits: Sequence[RowEdit | None]) -> Iterator[None]:
    """While active, row i of every forward pass gets `edits[i]` at `site` (None: unchanged)."""
    groups: dict[int, tuple[RowEdit, list[int]]] = {}
    for i, fn in enumerate(edits):
        if fn is not None:
            groups.setdefault(id(fn), (fn, []))[1].append(i)
    if not groups:
        yield
        return
    index = [(fn, torch.tensor(rows)) for fn, rows in groups.values()]

    def modify(x: Tensor, source: Tensor) -> Tensor:
        out = x.clone()
        for fn, rows in index:
            rows = rows.to(x.device)
            out[rows] = fn(x[rows])
        return out

    with splice(loaded.model, site, modify, layout=loaded.layout):
        yield


CHAT_HINT = "the refusal study needs an instruct (chat) model"
"""What to do when the model has no chat template."""


def chat_text(loaded: LoadedModel, message: str) -> str:
    """`message` as a user turn in the chat template, ending where the assistant's answer starts."""
    return user_turn(loaded.tokenizer, message, hint=CHAT_HINT)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pad_id(tokenizer) -> int:
    """The tokenizer's padding id, or its end-of-sequence id when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def generate_answers(
    loaded: LoadedModel,
    messages: Sequence[str],
    edits: Sequence[RowEdit | None] | None = None,
    site: Site | None = None,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    desc: str | None = None,
) -> list[str]:
    """Greedy answers to each message (in order), message i generated with `edits[i]` applied at `site`."""
    tokenizer, model = loaded.tokenizer, loaded.model
    device = module_device(model)
    edits = list(edits) if edits is not None else [None] * len(messages)
    if any(e is not None for e in edits) and site is None:
        raise ValueError("edits need the site they apply at")
    texts = [chat_text(loaded, m) for m in messages]
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    answers: dict[int, str] = {}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        bar = tqdm(total=len(texts), desc=desc, unit="answer", leave=False, disable=desc is None)
        for chunk in _batches(order, batch_size):
            batch = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with row_edits(loaded, site, [edits[i] for i in chunk]) if site is not None else contextlib.nullcontext():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id(tokenizer))
            decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            answers.update(zip(chunk, decoded))
            bar.update(len(chunk))
        bar.close()
    finally:
        tokenizer.padding_side = side
    return [answers[i].strip() for i in range(len(texts))]


def answer_token_ids(loaded: LoadedModel, message: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the chat prompt followed by the answer, and where the answer starts."""
    prompt_ids = loaded.tokenizer(chat_text(loaded, message), add_special_tokens=False)["input_ids"]
    answer_ids = loaded.tokenizer(answer, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


@torch.no_grad()
def answer_nll(loaded: LoadedModel, messages: Sequence[str], answers: Sequence[str], *, batch_size: int = 32) -> list[float]:
    """Mean negative log-likelihood (nats per token) of each answer given its prompt, under the plain model;
    exp of it is the answer's perplexity. NaN for an empty answer.

    Rows are left-padded (with explicit position ids) so every answer ends at the last position, and the
    LM head runs only on the last positions that hold answer tokens."""
    model, pad = loaded.model, pad_id(loaded.tokenizer)
    device = module_device(model)
    all_rows = [answer_token_ids(loaded, m, a) for m, a in zip(messages, answers)]
    order = sorted(range(len(all_rows)), key=lambda i: len(all_rows[i][0]))
    out: dict[int, float] = {}
    for chunk in _batches(order, batch_size):
        rows = [all_rows[i] for i in chunk]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, _) in enumerate(rows):
            ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
        keep = max(len(row) - start for row, start in rows) + 1  # answer tokens and the one before them
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=keep, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, width - keep + 1 :, None].to(device))[..., 0].cpu()
        for i, (row, start) in enumerate(rows):
            n = len(row) - start
            out[chunk[i]] = float(-logp[i, logp.shape[1] - n :].mean()) if n else math.nan
    return [out[i] for i in range(len(all_rows))]

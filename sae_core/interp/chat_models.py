"""The language models that explain and score features: a local model, or any OpenAI-compatible server.

Both offer the same two calls, so the explain pipeline never asks which one it has (a plain process with
a local model is the default; a server is swapped in with `--explainer-url` / `--scorer-url`):

- `generate(conversations)`: a greedy reply to each chat;
- `yes_probabilities(groups)`: for chats that end in a yes/no question, P(Yes) / (P(Yes) + P(No)) of the
  reply's first token. The chats of one group share a long prefix (instructions, few-shot turns and the
  explanation under test); the local model runs that prefix once and the differing tails as one batch.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ..errors import UserError
from ..model.load import LoadedModel
from ..text.tokens import render_chat, special_token_ids

Messages = list[dict[str, str]]
"""One chat: `[{"role": "system" | "user" | "assistant", "content": ...}, …]`."""


class ChatModel(Protocol):
    """What explaining and scoring need of a model."""

    name: str
    """Recorded with every explanation and score (e.g. the HF id, or `model@url`)."""

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int) -> list[str]:
        """A greedy reply to each chat, in order."""
        ...

    def yes_probabilities(self, groups: Sequence[Sequence[Messages]]) -> list[list[float | None]]:
        """P(Yes) / (P(Yes) + P(No)) of each chat's first reply token; None where the model gave no usable answer."""
        ...


def render(tokenizer, messages: Messages) -> str:
    """A chat as the prompt text the model continues: its chat template, or a plain `Role: text` layout without one."""
    if getattr(tokenizer, "chat_template", None):
        return render_chat(messages, tokenizer, add_generation_prompt=True, error=UserError)
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant:"


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that start a Yes and a No answer: every vocabulary token that reads as the word (any case,
    any surrounding whitespace), or, where the vocabulary has none, the first token of its spellings."""
    ids = range(len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in ids])
    skip = set(special_token_ids(tokenizer))
    found = {w: [i for i, t in zip(ids, texts) if t.strip().lower() == w and i not in skip] for w in ("yes", "no")}
    for word, found_ids in found.items():
        if not found_ids:
            spellings = (word, word.capitalize(), " " + word, " " + word.capitalize())
            found[word] = sorted({tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in spellings})
    both = set(found["yes"]) & set(found["no"])
    return [i for i in found["yes"] if i not in both], [i for i in found["no"] if i not in both]


def _cache_argument(model) -> str:
    """The forward argument that takes a KV cache: `cache` (transformers ≥ 5.x) or `past_key_values` (before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class LocalChatModel:
    """A causal LM in this process (the embedded SmolLM2 by default, any HF model, folder or .gguf)."""

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 16):
        self.loaded = loaded
        self.name = loaded.name
        self.batch_size = batch_size
        self.device = loaded.device
        tok = loaded.tokenizer
        yes, no = answer_token_ids(tok)
        self._yes, self._no = torch.tensor(yes, dtype=torch.long), torch.tensor(no, dtype=torch.long)
        self._cache_arg = _cache_argument(loaded.model)
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _ids(self, messages: Messages) -> list[int]:
        return self.loaded.tokenizer(render(self.loaded.tokenizer, messages), add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(self, conversations: Sequence[Messages], max_new_tokens: int) -> list[str]:
        rows = [self._ids(m) for m in conversations]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        replies: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = _left_padded([rows[i] for i in chunk], self._pad)
            out = self.loaded.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=self._pad,
            )
            texts = self.loaded.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            replies.update(zip(chunk, texts))
        return [replies[i] for i in range(len(rows))]

    @torch.no_grad()
    def yes_probabilities(self, groups: Sequence[Sequence[Messages]]) -> list[list[float | None]]:
        rows = [[self._ids(m) for m in group] for group in groups]
        flat = [r for group in rows for r in group]
        if not flat:
            return [[] for _ in groups]
        # what every chat shares (instructions, worked examples) runs once; each group's own prefix once more
        common = min(_common_prefix(flat), min(len(r) for r in flat) - 1)
        base = self._extend(None, flat[0][:common], 0) if common > 0 else None
        return [self._group(group, base, common) if group else [] for group in rows]

    def _extend(self, cache: Any, ids: list[int], start: int) -> Any:
        """A copy of `cache` (covering positions < `start`) extended by `ids`, for one row."""
        past = copy.deepcopy(cache) if cache is not None else None
        out = self.loaded.model(
            input_ids=torch.tensor([ids], device=self.device), position_ids=torch.arange(start, start + len(ids), device=self.device)[None],
            use_cache=True, logits_to_keep=1, **({self._cache_arg: past} if past is not None else {}),
        )
        return out["cache"] if "cache" in out else out["past_key_values"]

    def _group(self, rows: list[list[int]], base: Any, common: int) -> list[float | None]:
        """Extend the shared cache by the group's own prefix, then run its tails in batches on copies of it."""
        shared = min(_common_prefix(rows), min(len(r) for r in rows) - 1)  # every row keeps at least one token of its own
        cache = self._extend(base, rows[0][common:shared], common) if shared > common else base
        if cache is None:  # nothing shared at all: every row runs from its first token
            shared = 0
        out: list[float | None] = []
        for start in range(0, len(rows), self.batch_size):
            tails = [r[shared:] for r in rows[start : start + self.batch_size]]
            ids, mask = _left_padded(tails, self._pad)
            n = len(tails)
            positions = shared + (mask.cumsum(-1) - 1).clamp_min(0)
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(n)
                mask = torch.cat([torch.ones(n, shared, dtype=mask.dtype), mask], dim=1)
            logits = self.loaded.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), position_ids=positions.to(self.device),
                use_cache=past is not None, logits_to_keep=1, **({self._cache_arg: past} if past is not None else {}),
            ).logits[:, -1].float()
            probs = logits.softmax(-1).cpu()
            yes, no = probs[:, self._yes].sum(-1), probs[:, self._no].sum(-1)
            total = yes + no
            out += [float(y / t) if t > 0 else None for y, t in zip(yes, total)]
        return out


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _common_prefix(rows: list[list[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for other in rows[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return n

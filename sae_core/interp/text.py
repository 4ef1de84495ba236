"""Token windows as text for a language model to read: marks around firing tokens, hostile text made harmless.

Examples come from arbitrary corpora, so a window may hold chat-template markers (`<|im_end|>`), the
`<< >>` marks themselves, markup, quotes or control characters. Shown to an explainer or scorer as they
are, they could end its chat turn or fake a mark. `clean_text` turns every `<`/`>` into `‹`/`›` (so
neither `<<`, `<|…|>`, `<s>` nor HTML survive), bracketed control words such as `[INST]` into
full-width brackets, newlines into `⏎` (one example stays one line) and other control characters into
`�`. Everything a model reads (examples, explanations, token handles) passes through it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

OPEN, CLOSE = "<<", ">>"
"""Marks around the tokens where a feature fires (as delphi and OpenAI's explainers write them)."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_BRACKETED = re.compile(r"\[(/?[A-Z][A-Z_]*)\]")


def clean_text(text: str) -> str:
    """`text` safe to put inside a prompt line: no angle brackets, control words, newlines or control characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "⏎").replace("\t", " ")
    text = text.replace("<", "‹").replace(">", "›")
    text = _BRACKETED.sub(lambda m: f"［{m.group(1)}］", text)
    return _CONTROL.sub("\ufffd", text)


def marked_text(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """The tokens joined into one line, each run of marked tokens wrapped in `<< >>` (marks outside the token's spaces)."""
    out: list[str] = []
    inside = False
    for token, mark in zip(tokens, marked):
        token = clean_text(token)
        if mark and not inside:
            stripped = token.lstrip(" ")
            out.append(token[: len(token) - len(stripped)] + OPEN)
            token, inside = stripped, True
        elif not mark and inside:
            out.append(CLOSE)
            inside = False
        out.append(token)
    if inside:
        out.append(CLOSE)
    return "".join(out).strip()


def plain_text(tokens: Sequence[str]) -> str:
    """The tokens joined into one clean line, without marks."""
    return clean_text("".join(tokens)).strip()


def firing_marks(acts: Sequence[float], threshold: float = 0.3) -> list[bool]:
    """Which tokens to mark: activation at least `threshold` × the window's maximum (delphi's rule), and above 0."""
    peak = max((float(a) for a in acts if a == a), default=0.0)
    return [a == a and float(a) > 0 and float(a) >= threshold * peak for a in acts]


def crop(n: int, center: int, half_width: int) -> slice:
    """The slice of ±`half_width` positions around `center` in a sequence of `n`, shifted (not shrunk) at the edges."""
    width = min(n, 2 * half_width + 1)
    start = min(max(center - half_width, 0), n - width)
    return slice(start, start + width)


def one_line(text: str, limit: int = 300) -> str:
    """An LLM's reply as one clean line of at most `limit` characters."""
    text = " ".join(clean_text(text).replace("⏎", " ").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"

"""Short automatic labels: the tokens a feature fires on most strongly and the tokens it promotes.

Not an explanation by a language model — a quick handle for search and lists, e.g.
`"cat" "dog" "cats" → "purr" "meow"`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

DEAD_LABEL = "(dead: never fired)"


def display_token(text: str) -> str:
    """A token as shown in labels and tables: surrounding whitespace trimmed, newlines visible."""
    shown = text.replace("\n", "⏎").strip()
    return shown or repr(text)


def top_tokens(max_token_ids: Sequence[int], n: int = 3) -> list[int]:
    """The `n` most frequent tokens among the top examples' maxima, ties broken by first occurrence."""
    counts = Counter(max_token_ids)
    first = {t: i for i, t in reversed(list(enumerate(max_token_ids)))}
    return sorted(counts, key=lambda t: (-counts[t], first[t]))[:n]


def make_label(max_token_ids: Sequence[int], promoted_ids: Sequence[int], vocab: Sequence[str], dead: bool) -> str:
    """`"tok" "tok" → "tok" "tok"` from the activating tokens (most frequent at the maxima) and promoted tokens."""
    if dead:
        return DEAD_LABEL
    fires = " ".join(f'"{display_token(vocab[t])}"' for t in _unique_display(top_tokens(max_token_ids, 6), vocab, 3))
    promotes = " ".join(f'"{display_token(vocab[t])}"' for t in _unique_display(promoted_ids, vocab, 2))
    return f"{fires} → {promotes}" if promotes else fires


def _unique_display(ids: Sequence[int], vocab: Sequence[str], n: int) -> list[int]:
    """The first `n` ids whose displayed forms differ (" the" and "the" show alike)."""
    seen, out = set(), []
    for t in ids:
        shown = display_token(vocab[t]).lower()
        if shown not in seen:
            seen.add(shown)
            out.append(t)
        if len(out) == n:
            break
    return out

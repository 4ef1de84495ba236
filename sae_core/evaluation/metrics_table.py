"""Plain-text and Markdown tables of SAE metrics, for the CLI and the README."""

from __future__ import annotations

from typing import Any

_COLUMNS = [
    ("site", "site", "{}"),
    ("architecture", "arch", "{}"),
    ("d_sae", "d_sae", "{:,}"),
    ("l0", "L0", "{:.1f}"),
    ("fvu", "FVU", "{:.3f}"),
    ("explained_variance", "expl. var.", "{:.3f}"),
    ("dead_fraction", "dead", "{:.1%}"),
    ("dense_fraction", "dense", "{:.1%}"),
    ("ce_loss_recovered", "CE rec.", "{:.3f}"),
    ("kl_div", "KL", "{:.4f}"),
    ("delta_lm_loss", "ΔLM loss", "{:.4f}"),
    ("training_tokens", "train tok", "{:,}"),
    ("eval_tokens", "eval tok", "{:,}"),
]


def _cell(fmt: str, value: Any) -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


NOTES = {"ce_loss_recovered": "ce_loss_recovered_note", "dead_fraction": "dead_fraction_note"}
"""Metric → the note that qualifies it (evals.py): a flagged cell reads "n/a" (no value) or carries a "*"."""
_NOTE_TITLES = {"ce_loss_recovered": "CE rec.", "dead_fraction": "dead"}


def _flagged_cell(m: dict[str, Any], key: str, fmt: str) -> str:
    note = isinstance(m.get(NOTES.get(key, "")), str)
    value = m.get(key)
    if note and (value is None or value != value):  # None, or NaN from a table
        return "n/a"
    return _cell(fmt, value) + ("*" if note else "")


def metrics_rows(metrics: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows, one per SAE, in the order given; flagged cells read "n/a" or end in "*"."""
    header = [title for _, title, _ in _COLUMNS]
    rows = [[_flagged_cell(m, key, fmt) for key, _, fmt in _COLUMNS] for m in metrics.values()]
    return header, rows


def metrics_notes(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """One line per flag behind an "n/a" or "*" cell, and the evaluation's own shortfall note once."""
    lines = []
    for m in metrics.values():
        site = m.get("site") or m.get("hook_name", "?")
        lines += [f"{site} {_NOTE_TITLES[key]}: {m[note]}" for key, note in NOTES.items() if isinstance(m.get(note), str)]
    shortfalls = dict.fromkeys(m["eval_note"] for m in metrics.values() if isinstance(m.get("eval_note"), str))
    return lines + list(shortfalls)


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """An aligned plain-text table for the terminal."""
    header, rows = metrics_rows(metrics)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"  {note}" for note in metrics_notes(metrics)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of already formatted cells (`|` inside a cell is escaped)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)])


def metrics_markdown(metrics: dict[str, dict[str, Any]]) -> str:
    """A Markdown table (for README and reports), with the notes behind flagged cells as a list below it."""
    notes = metrics_notes(metrics)
    return markdown_table(*metrics_rows(metrics)) + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")

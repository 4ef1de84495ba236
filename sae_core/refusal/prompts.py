"""The refusal study's contrast sets: the shipped harmful / harmless requests, or the user's own files.

A file is JSON lines with a "prompt" field, CSV with a "prompt" column, or plain text with one prompt
per line. Each prompt belongs to the "discovery" half (find features) or the "heldout" half (steer and
measure): the file's own "split" field where it has one, else every other prompt.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..data_files import data_root
from ..errors import UserError

Split = Literal["discovery", "heldout"]
SPLITS: tuple[Split, ...] = ("discovery", "heldout")
PROMPT_FIELDS = ("prompt", "instruction", "goal", "text")
"""Field / column names read as the prompt, first found wins (AdvBench's CSV calls it "goal")."""


class PromptFileError(UserError):
    """A prompt file is missing, empty or malformed."""


@dataclass(frozen=True)
class Prompt:
    """One request of a contrast set."""

    id: str
    text: str
    split: Split


@dataclass(frozen=True)
class ContrastSets:
    """Requests a chat model should refuse, and harmless requests of similar form."""

    harmful: list[Prompt]
    harmless: list[Prompt]

    def split(self, which: Split) -> tuple[list[Prompt], list[Prompt]]:
        """(harmful, harmless) prompts of one half."""
        return [p for p in self.harmful if p.split == which], [p for p in self.harmless if p.split == which]


def load_contrast_sets(harmful: str | Path | None = None, harmless: str | Path | None = None) -> ContrastSets:
    """The two sets: the given files, or the shipped `data/refusal/harmful.jsonl` and `harmless.jsonl`."""
    sets = ContrastSets(load_prompts(harmful or refusal_data() / "harmful.jsonl"), load_prompts(harmless or refusal_data() / "harmless.jsonl"))
    for name, prompts in (("harmful", sets.harmful), ("harmless", sets.harmless)):
        for split in SPLITS:
            if not any(p.split == split for p in prompts):
                raise PromptFileError(f"the {name} set has no {split} prompts; give it at least two prompts, "
                                      f"or mark some 'discovery' and some 'heldout' in a 'split' field")
    return sets


def load_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a .jsonl, .csv or .txt file, each with its split."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist; give a .jsonl, .csv or .txt file of prompts")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PromptFileError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(text, path)
    elif suffix == ".csv":
        rows = _csv_rows(text, path)
    elif suffix == ".txt":
        rows = [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    else:
        raise PromptFileError(f"{path}: unknown prompt file type {suffix!r}; use .jsonl, .csv or .txt")
    if not rows:
        raise PromptFileError(f"{path} holds no prompts; put one prompt per line (or per JSON record / CSV row)")
    prompts = []
    for i, row in enumerate(rows):
        prompt = _prompt_text(row, path, i)
        split = row.get("split") or SPLITS[i % 2]
        if split not in SPLITS:
            raise PromptFileError(f"{path}, prompt {i + 1}: split {split!r} is neither 'discovery' nor 'heldout'")
        prompts.append(Prompt(str(row.get("id") or f"{path.stem}-{i + 1:03d}"), prompt, split))
    return prompts


def _jsonl_rows(text: str, path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{path}, line {number}: not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{path}, line {number}: expected a JSON object with a \"prompt\" field")
        rows.append(row)
    return rows


def _csv_rows(text: str, path: Path) -> list[dict]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not set(PROMPT_FIELDS) & set(reader.fieldnames):
        raise PromptFileError(f"{path}: no prompt column; the CSV header needs one of {', '.join(PROMPT_FIELDS)}")
    return list(reader)


def _prompt_text(row: dict, path: Path, i: int) -> str:
    value = next((row[f] for f in PROMPT_FIELDS if f in row), None)
    if not isinstance(value, str) or not value.strip():
        raise PromptFileError(f"{path}, prompt {i + 1}: no prompt text; give each record a non-empty \"prompt\"")
    return value.strip()


def refusal_data() -> Path:
    """The contrast sets that ship with sae-explorer (`data/refusal/` in a checkout)."""
    return data_root() / "refusal"

"""Annotations on features: notes, tags, lists and steering presets, kept next to a run's feature file.

Any producer writes its own file, `RUN/annotations/SOURCE.json` (the refusal study writes `refusal-study.json`;
the app writes what a user adds to `user.json`), and readers merge them. The feature file stays read-only
statistics: annotations are the part people and studies add, so they live beside it, in JSON only, each file
replaced atomically. Format (every key optional but `source`):

    {"format_version": 1, "source": "refusal-study",
     "notes": [{"sae": "L14R", "feature": 123, "text": "refusal feature: answer contrast #1", "tags": ["refusal"]}],
     "lists": {"refusal features": [["L14R", 123], ["L14R", 7]]},
     "presets": [{"name": "refusal, answer: top-3 features",
                  "edits": [{"sae": "L14R", "feature": 123, "strength": 12.5, "mode": "add"}],
                  "help": "at the strength where they steered best"}]}
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import write_json

FOLDER = "annotations"
USER_SOURCE = "user"
FORMAT_VERSION = 1
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_WRITE_LOCK = threading.Lock()  # the app's sessions share one process: one read-modify-write at a time


class AnnotationError(UserError):
    """An annotation that cannot be stored (an empty note, a bad list name)."""


@dataclass
class Note:
    sae: str
    feature: int
    text: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class PresetEdit:
    sae: str
    feature: int
    strength: float
    mode: str = "add"


@dataclass
class Preset:
    name: str
    edits: list[PresetEdit]
    help: str = ""


@dataclass
class Annotations:
    """One producer's annotations of a run's features."""

    source: str
    notes: list[Note] = field(default_factory=list)
    lists: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    presets: list[Preset] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "source": self.source,
                "notes": [asdict(n) for n in self.notes],
                "lists": {name: [[sae, int(f)] for sae, f in members] for name, members in self.lists.items()},
                "presets": [asdict(p) for p in self.presets]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Annotations:
        return cls(
            source=str(data["source"]),
            notes=[Note(str(n["sae"]), int(n["feature"]), str(n.get("text", "")), [str(t) for t in n.get("tags", [])])
                   for n in data.get("notes", [])],
            lists={str(name): [(str(sae), int(f)) for sae, f in members] for name, members in data.get("lists", {}).items()},
            presets=[Preset(str(p["name"]), [PresetEdit(str(e["sae"]), int(e["feature"]), float(e["strength"]),
                                                        str(e.get("mode", "add"))) for e in p["edits"]], str(p.get("help", "")))
                     for p in data.get("presets", [])],
        )


def annotations_dir(run: str | Path) -> Path:
    return Path(run) / FOLDER


def _path(run: str | Path, source: str) -> Path:
    if not _SOURCE_NAME.match(source):
        raise AnnotationError(f"annotation source {source!r} must be a short name of letters, digits, '.', '_' or '-'")
    return annotations_dir(run) / f"{source}.json"


def write_annotations(run: str | Path, annotations: Annotations) -> Path:
    """Replace this producer's file atomically (the other producers' files are left alone)."""
    path = _path(run, annotations.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, annotations.to_json())
    return path


def read_annotations(run: str | Path) -> tuple[list[Annotations], list[str]]:
    """Every producer's annotations of the run (sorted by source) and a message per file that could not be read
    (it is skipped, never fatal: annotations are an overlay on the statistics)."""
    found, problems = [], []
    folder = annotations_dir(run)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
                raise ValueError(f"format_version {data['format_version']} is newer than this sae-explorer reads")
            found.append(Annotations.from_json(data))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{FOLDER}/{path.name} skipped: {exc}")
    return found, problems


@dataclass
class FeatureAnnotations:
    """Everything annotated about one feature, across producers."""

    notes: list[tuple[str, str]]  # (source, text)
    tags: list[str]
    lists: list[str]


def merged(annotations: list[Annotations]) -> dict[tuple[str, int], FeatureAnnotations]:
    """(SAE, feature) → its notes, tags and list memberships from every producer."""
    out: dict[tuple[str, int], FeatureAnnotations] = {}

    def entry(key: tuple[str, int]) -> FeatureAnnotations:
        return out.setdefault(key, FeatureAnnotations([], [], []))

    for ann in annotations:
        for note in ann.notes:
            item = entry((note.sae, note.feature))
            if note.text:
                item.notes.append((ann.source, note.text))
            item.tags.extend(t for t in note.tags if t not in item.tags)
        for name, members in ann.lists.items():
            for key in members:
                if name not in entry(key).lists:
                    entry(key).lists.append(name)
    return out


def presets(annotations: list[Annotations]) -> dict[str, Preset]:
    """Preset name → preset, from every producer (a later source's preset of the same name wins)."""
    return {p.name: p for ann in annotations for p in ann.presets}


def _update_user(run: str | Path, change) -> Annotations:
    with _WRITE_LOCK:
        mine = next((a for a in read_annotations(run)[0] if a.source == USER_SOURCE), Annotations(USER_SOURCE))
        change(mine)
        write_annotations(run, mine)
        return mine


def add_note(run: str | Path, sae: str, feature: int, text: str = "", tags: list[str] | tuple[str, ...] = ()) -> Annotations:
    """A user's note and/or tags on a feature, saved in `RUN/annotations/user.json`."""
    text, tags = text.strip(), [t.strip() for t in tags if t.strip()]
    if not text and not tags:
        raise AnnotationError("write a note or a tag first")

    def change(mine: Annotations) -> None:
        mine.notes.append(Note(sae, int(feature), text, tags))

    return _update_user(run, change)


def add_to_list(run: str | Path, name: str, sae: str, feature: int) -> Annotations:
    """Add a feature to one of the user's lists (created on first use; a feature is listed once)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise AnnotationError("a list needs a name of 1 to 100 characters")

    def change(mine: Annotations) -> None:
        members = mine.lists.setdefault(name, [])
        if (sae, int(feature)) not in members:
            members.append((sae, int(feature)))

    return _update_user(run, change)


def export_list(annotations: list[Annotations], name: str) -> str:
    """A list as JSON (its name and its features, with every producer's notes on them), to share or reload."""
    members = [key for ann in annotations for key in ann.lists.get(name, [])]
    if not members:
        raise AnnotationError(f"no list named {name!r}")
    notes = merged(annotations)  # every listed feature is in it
    return json.dumps({"list": name, "features": [
        {"sae": sae, "feature": f, "notes": [text for _, text in notes[(sae, f)].notes], "tags": notes[(sae, f)].tags}
        for sae, f in dict.fromkeys(members)]}, indent=1)

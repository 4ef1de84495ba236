"""The refusal study's findings as annotations (`RUN/annotations/refusal-study.json`): a note and a `refusal` tag
on each top feature, a "refusal features" list, and steering presets at the strength where they steered best.
The app reads only annotations, so it needs to know nothing of this study."""

from __future__ import annotations

from pathlib import Path

from ..features.annotations import Annotations, Note, Preset, PresetEdit, write_annotations
from ..loading import load_sae
from ..model.sites import Site, parse_site
from ..runs.run_folder import RunDir
from ..saes import SAE
from .presets import refusal_presets
from .results import FEATURES_FILE, read_features_file, refusal_dir, refusal_marks

SOURCE = "refusal-study"
TAG = "refusal"
LIST = "refusal features"
PRESET_HELP = "features found by `sae-explorer refusal study`, at the strength where they steered best"


def refusal_annotations(run: str | Path, saes: dict[Site, SAE]) -> Annotations:
    """The study's marks and presets (presets need the steering site's SAE among `saes`)."""
    marks = refusal_marks(run)
    notes = [Note(sae, feature, text, [TAG]) for (sae, feature), text in marks.items()]
    presets = [Preset(name, [PresetEdit(e.site.short, e.feature, e.strength, e.mode) for e in edits], PRESET_HELP)
               for name, edits in refusal_presets(run, saes).items()]
    return Annotations(SOURCE, notes=notes, lists={LIST: list(marks)} if marks else {}, presets=presets)


def write_refusal_annotations(run: str | Path, saes: dict[Site, SAE] | None = None) -> Path | None:
    """Write the study's annotations (None when the run has no study). Without `saes`, the steering site's SAE is
    read from the run folder: no model needed."""
    if not (refusal_dir(run) / FEATURES_FILE).is_file():
        return None
    if saes is None:
        site = parse_site(read_features_file(refusal_dir(run))["steer_site"])
        folder = RunDir(run).sae_dir(site.hook_name)
        saes = {site: load_sae(folder)} if folder.is_dir() else {}
    return write_annotations(run, refusal_annotations(run, saes))

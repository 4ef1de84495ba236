"""The refusal study's files in `RUN/refusal/`: what was found and measured (JSON), the directions
(safetensors), every answer (JSON lines), and readers for the app (which marks and presets the features).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..io import atomic_path, read_json, write_json
from .find import Contrast

FOLDER = "refusal"
FEATURES_FILE = "features.json"
DIRECTIONS_FILE = "directions.safetensors"
ANSWERS_FILE = "answers.jsonl"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FORMAT_VERSION = 1


def refusal_dir(run: str | Path) -> Path:
    """Where a run's refusal study lives."""
    return Path(run) / FOLDER


@dataclass
class RefusalResults:
    """Everything the study found and measured."""

    config: dict[str, Any]
    model: str
    sites: list[str]
    steer_site: str
    contrasts: dict[str, dict[str, Contrast]]
    """contrast name ("prompt", "answer") → SAE short name → ranked features and direction."""
    conditions: list[dict[str, Any]]
    """One summary row per generated condition (baseline, method × strength, ablation)."""
    notes: list[str] = field(default_factory=list)
    discovery_answers: list[dict[str, Any]] = field(default_factory=list)
    heldout_answers: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)
    residual_scale: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "model": self.model, "sites": self.sites, "steer_site": self.steer_site,
            "config": self.config, "notes": self.notes, "baseline": self.baseline, "residual_scale": self.residual_scale,
            "contrasts": {
                name: {site: {"n_a": c.n_a, "n_b": c.n_b, "resid_norm": c.resid_norm,
                              "direction_norm": float(c.direction.norm()), "features": c.features.to_dict("records")}
                       for site, c in by_site.items()}
                for name, by_site in self.contrasts.items()
            },
            "conditions": self.conditions,
        }

    @classmethod
    def load(cls, folder: Path) -> RefusalResults:
        """The results saved in `folder`: features.json, the directions' safetensors file and answers.jsonl."""
        data = read_features_file(folder)
        directions = load_file(str(Path(folder) / DIRECTIONS_FILE))
        contrasts = {
            name: {site: Contrast(pd.DataFrame(c["features"]), directions[f"{name}.{site}"], c["n_a"], c["n_b"], c["resid_norm"])
                   for site, c in by_site.items()}
            for name, by_site in data["contrasts"].items()
        }
        answers = read_answers(folder)
        return cls(config=data["config"], model=data["model"], sites=data["sites"], steer_site=data["steer_site"],
                   contrasts=contrasts, conditions=data.get("conditions", []), notes=data.get("notes", []),
                   discovery_answers=[a for a in answers if a.get("stage") == "discovery"],
                   heldout_answers=[a for a in answers if a.get("stage") == "heldout"],
                   baseline=data.get("baseline", {}), residual_scale=data.get("residual_scale"))


def best_conditions(conditions: list[dict[str, Any]], *, include_zero: bool = True) -> dict[str, dict[str, Any]]:
    """Method → its steering condition on harmless prompts with the highest refusal rate (the smallest α among
    ties); α = 0, the unsteered answers, competes only when `include_zero`."""
    best: dict[str, dict[str, Any]] = {}
    for c in conditions:
        if c.get("set") != "harmless" or c.get("method") in (None, "none") or c.get("alpha") is None:
            continue
        if not include_zero and c["alpha"] == 0:
            continue
        held = best.get(c["method"])
        if held is None or (-c["refusal_rate"], c["alpha"]) < (-held["refusal_rate"], held["alpha"]):
            best[c["method"]] = c
    return best


def read_features_file(folder: Path) -> dict[str, Any]:
    """features.json of a refusal study, checked for its format version."""
    path = Path(folder) / FEATURES_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `sae-explorer refusal find RUN` first")
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; run `sae-explorer refusal find RUN` again") from None
    if data.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has format version {data.get('format_version')}, this version reads {FORMAT_VERSION}; "
                        "run `sae-explorer refusal find RUN` again")
    return data


def write_results(folder: Path, results: RefusalResults) -> None:
    """features.json (atomically)."""
    write_json(Path(folder) / FEATURES_FILE, results.to_json())


def write_directions(folder: Path, results: RefusalResults) -> None:
    """directions.safetensors: each contrast's difference-of-means direction per SAE, "prompt.L14R" etc. (atomically)."""
    tensors = {f"{name}.{site}": c.direction.contiguous() for name, by_site in results.contrasts.items()
               for site, c in by_site.items()}
    with atomic_path(Path(folder) / DIRECTIONS_FILE) as tmp:
        save_file(tensors, str(tmp))


def write_answers(folder: Path, results: RefusalResults) -> None:
    """answers.jsonl: every discovery and held-out answer with its verdict (atomically)."""
    with atomic_path(Path(folder) / ANSWERS_FILE) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in results.discovery_answers + results.heldout_answers:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_answers(folder: Path) -> list[dict[str, Any]]:
    """The rows of answers.jsonl (none when it does not exist yet)."""
    path = Path(folder) / ANSWERS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def refusal_features(run: str | Path, contrast: str = "prompt") -> dict[str, pd.DataFrame]:
    """SAE short name → that SAE's refusal features of one contrast, best first (empty when the run has no
    study or no such contrast). For the app's marks and presets; never raises for a missing study."""
    folder = refusal_dir(run)
    if not (folder / FEATURES_FILE).is_file():
        return {}
    try:
        data = read_features_file(folder)
    except UserError:
        return {}
    by_site = data["contrasts"].get(contrast, {})
    return {site: pd.DataFrame(c["features"]).assign(rank=lambda d: range(1, len(d) + 1)) for site, c in by_site.items()}


def refusal_marks(run: str | Path, top: int = 10) -> dict[tuple[str, int], str]:
    """(SAE short name, feature) → a short note for the app, e.g. "refusal feature: prompt contrast #2 (d 1.31)",
    for the `top` features of each contrast at each searched SAE."""
    marks: dict[tuple[str, int], list[str]] = {}
    for contrast in ("prompt", "answer"):
        for site, table in refusal_features(run, contrast).items():
            for row in table.head(top).itertuples():
                marks.setdefault((site, int(row.feature)), []).append(f"{contrast} contrast #{row.rank} (d {row.effect:.2f})")
    return {key: "refusal feature: " + "; ".join(notes) for key, notes in marks.items()}

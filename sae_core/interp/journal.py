"""A resumable record of explain work: one JSON line per finished step, appended and synced as it happens.

Each rank appends to its own file under `RUN/.explain/<job key>/`; a rerun of the same job reads every
rank's file and skips what is recorded. A line cut short by a kill is ignored. The job key changes with
anything that changes results (models, prompts, options, the feature file), so stale work is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

WORK_DIR = ".explain"


def job_key(fingerprint: dict[str, Any]) -> str:
    """A short stable name for a job from what defines its results."""
    return hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


class Journal:
    """The records of one job: `write` appends this rank's; `read` returns every rank's, keyed by (stage, sae, feature)."""

    def __init__(self, run: Path, fingerprint: dict[str, Any], rank: int = 0):
        self.folder = run / WORK_DIR / job_key(fingerprint)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "job.json").write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
        self.path = self.folder / f"rank-{rank:05d}.jsonl"

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append records and sync them to disk (a kill after this keeps them)."""
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> dict[tuple[str, str, int], dict[str, Any]]:
        """Every complete record of every rank; a later record of the same step wins."""
        out: dict[tuple[str, str, int], dict[str, Any]] = {}
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        out[(record["stage"], record["sae"], int(record["feature"]))] = record
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a kill
        return out

    def remove(self) -> None:
        """Delete the job's records (after they are safely in the feature file)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = self.folder.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

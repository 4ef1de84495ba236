"""The runs a server may open: named on the command line or found directly under one folder, and nothing else.

A URL names a run by its name; the name is looked up in this list, never joined onto a path, so `../`, absolute
paths, encoded forms and symlinks out of the root all end the same way: "no such run", which says nothing about
what exists on the server.
"""

from __future__ import annotations

from pathlib import Path

from ..runs.run_folder import RUN_FILE


class RunCatalog:
    """Names → run folders, from explicit runs and/or every run folder directly under `runs_dir`."""

    def __init__(self, runs: dict[str, str] | None = None, runs_dir: str | Path | None = None):
        self._explicit = {name or Path(path).resolve().name: Path(path).resolve() for name, path in (runs or {}).items()}
        self.runs_dir = Path(runs_dir).resolve() if runs_dir else None

    def runs(self) -> dict[str, Path]:
        """Every run served now (a folder of runs is read again each call: new runs appear, removed ones go), newest
        first within the folder, after the runs named explicitly."""
        found = dict(self._explicit)
        if self.runs_dir is not None and self.runs_dir.is_dir():
            inside = []
            for child in self.runs_dir.iterdir():
                if child.name.startswith(".") or child.name in found or not (child / RUN_FILE).is_file():
                    continue
                real = child.resolve()
                if real.parent == self.runs_dir:  # a symlink out of the root is not a run of this root
                    inside.append(((real / RUN_FILE).stat().st_mtime_ns, child.name, real))
            found.update({name: path for _, name, path in sorted(inside, reverse=True)})
        return found

    def names(self) -> list[str]:
        return list(self.runs())

    def resolve(self, name: str | None) -> Path | None:
        """The folder of the run called `name`, or None (for any name that is not exactly one of `names()`)."""
        if not name or not isinstance(name, str):
            return None
        path = self.runs().get(name)
        return path if path is not None and (path / RUN_FILE).is_file() else None

    def default(self) -> str | None:
        """The run shown when the URL names none: the first one named on the command line, else the newest."""
        names = self.names()
        return names[0] if names else None

    def describe(self) -> str:
        """Where runs come from, for messages ("3 runs under /srv/runs", "2 runs named on the command line")."""
        parts = [f"{len(self._explicit)} run(s) named on the command line"] if self._explicit else []
        if self.runs_dir is not None:
            parts.append(f"the runs under {self.runs_dir}")
        return " and ".join(parts) or "no runs"

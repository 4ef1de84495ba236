"""The run folder `runs/NAME/`: run.json, saes/<hook_name>/, checkpoints/, train_log.jsonl.

A run folder is never silently reused for something else: a different configuration or a
finished run is refused unless the user passes --overwrite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..io import read_json, write_json

RUN_FILE = "run.json"
_RUN_ENTRIES = (RUN_FILE, "saes", "checkpoints", "train_log.jsonl", "features.duckdb", "features", "features.search.sqlite",
                "features.vectors", ".precompute")


class RunDir:
    """Paths and state of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def run_json(self) -> Path:
        return self.path / RUN_FILE

    @property
    def saes_dir(self) -> Path:
        return self.path / "saes"

    @property
    def checkpoint_dir(self) -> Path:
        """One safetensors file per site plus the manifest naming them."""
        return self.path / "checkpoints"

    @property
    def has_checkpoint(self) -> bool:
        """Whether a checkpoint (of any version: one of another is refused when restored) is here to resume."""
        return self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.iterdir())

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint's manifest: written last, so it only ever names complete site files."""
        return self.checkpoint_dir / "state.json"

    @property
    def log_path(self) -> Path:
        return self.path / "train_log.jsonl"

    def sae_dir(self, hook_name: str) -> Path:
        return self.saes_dir / hook_name

    def sae_dirs(self) -> list[Path]:
        """SAE folders of this run, in layer/site order of their hook names."""
        if not self.saes_dir.is_dir():
            return []
        return sorted((p for p in self.saes_dir.iterdir() if (p / "cfg.json").is_file()), key=_hook_sort_key)

    def read(self) -> dict[str, Any] | None:
        """The run.json contents, or None when the folder holds no run."""
        if not self.run_json.is_file():
            return None
        try:
            return read_json(self.run_json)
        except (OSError, ValueError) as exc:
            raise RunError(f"{self.run_json} is unreadable ({exc}); remove it or pass --overwrite") from None

    def write(self, info: dict[str, Any]) -> None:
        write_json(self.run_json, info)

    def require(self) -> dict[str, Any]:
        """The run.json of an existing run, or a clear error."""
        if not self.path.exists():
            raise RunError(f"run folder {self.path} does not exist; train one with `sae-explorer train --out {self.path}`")
        info = self.read()
        if info is None:
            raise RunError(f"{self.path} is not a run folder (no {RUN_FILE}); train one with `sae-explorer train --out {self.path}`")
        return info

    def prepare_training(self, fingerprint: dict[str, Any], overwrite: bool) -> bool:
        """Check the folder can take this training run; return True when it should resume a checkpoint."""
        if overwrite:
            self.clear()
            return False
        if not self.path.exists() or not any(self.path.iterdir()):
            return False
        info = self.read()
        if info is None:
            raise RunError(
                f"output folder {self.path} is not empty and holds no run; choose another --out or pass --overwrite"
            )
        old = info.get("config_fingerprint", {})
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            raise RunError(
                f"output folder {self.path} holds a different run (differs in: {', '.join(changed)}); "
                "choose another --out or pass --overwrite to replace it"
            )
        if info.get("status") == "complete":
            raise RunError(
                f"output folder {self.path} already holds this finished run; evaluate it with "
                f"`sae-explorer eval {self.path}` or pass --overwrite to train again"
            )
        if self.has_checkpoint:
            return True
        self.clear()  # an earlier attempt of this run stopped before its first checkpoint: start clean
        return False

    def clear(self) -> None:
        """Remove what a previous run wrote here (and nothing else)."""
        for name in _RUN_ENTRIES:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def append_log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to train_log.jsonl."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


_KIND_ORDER = {"hook_attn_out": 0, "hook_mlp_out": 1, "hook_resid_post": 2}


def _hook_sort_key(path: Path) -> tuple:
    parts = path.name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        return (int(parts[1]), _KIND_ORDER.get(parts[2], 9), path.name)
    return (10**9, 0, path.name)

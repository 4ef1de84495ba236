"""How `sae-explorer app` tells the Streamlit process what to serve and within which limits (one JSON environment
variable, so the settings never pass through a URL)."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError

SERVE_ENV = "SAE_EXPLORER_SERVE"
"""The JSON of a `ServeSettings`, set by `sae-explorer app` for the Streamlit process it starts."""
AUTH_ENV = "SAE_EXPLORER_AUTH_TOKEN"
"""The access token, kept out of SERVE_ENV's JSON (and out of `ps` when set by the operator instead of --auth-token)."""


@dataclass(frozen=True)
class ServeSettings:
    """What the app serves (`runs`: name → folder, `runs_dir`: every run directly under it) and its limits."""

    runs: dict[str, str] = field(default_factory=dict)
    runs_dir: str | None = None
    max_live_runs: int = 1
    """Models with their SAEs kept in memory at once; the least recently used one is dropped for a new one."""
    max_live_jobs: int = 1
    """Model computations (prompt activations, attribution, generation) running at once; the others wait in line."""
    max_waiting_jobs: int = 16
    """Requests allowed to wait in line; beyond that a visitor is told the model is busy."""
    max_prompt_tokens: int = 512
    max_new_tokens: int = 128
    jobs_per_minute: int = 20
    """Model computations one browser session may start per minute (answers another session already got are free)."""
    model_threads: int | None = None
    """Torch threads for model work (None: torch's choice); fewer than the cores leaves one for the browsing pages."""

    def __post_init__(self) -> None:
        for name in ("max_live_runs", "max_live_jobs", "max_prompt_tokens", "max_new_tokens", "jobs_per_minute",
                     "model_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_waiting_jobs < 0:
            raise UserError(f"--max-waiting-jobs must be 0 or more, got {self.max_waiting_jobs}")

    def to_env(self) -> dict[str, str]:
        """The environment entries that hand these settings to the Streamlit process."""
        return {SERVE_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServeSettings:
        """The settings `sae-explorer app` passed; without them (e.g. `streamlit run explorer/app.py`), every run under ./runs."""
        environ = os.environ if environ is None else environ
        if SERVE_ENV in environ:
            data: dict[str, Any] = json.loads(environ[SERVE_ENV])
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in data.items() if k in known})
        return cls(runs_dir="runs")


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the app on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything

"""How `sae-explorer app` tells the Streamlit process what to serve and within which limits (one JSON environment
variable, so the settings never pass through a URL)."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError
from ..options import option

SERVE_ENV = "SAE_EXPLORER_SERVE"
"""The JSON of a `ServeSettings`, set by `sae-explorer app` for the Streamlit process it starts."""
AUTH_ENV = "SAE_EXPLORER_AUTH_TOKEN"
"""The access token, kept out of SERVE_ENV's JSON (and out of `ps` when set by the operator instead of --auth-token)."""


@dataclass(frozen=True)
class ServeLimits:
    """What one server allows its visitors: the limits of `sae-explorer app`, which its flags set."""

    max_live_runs: int = option(1, "models (with their SAEs) kept in memory, the least recently used dropped first")
    max_live_jobs: int = option(1, "model computations (prompt activations, attribution, generation) at once; the "
                                "others wait in line")
    max_waiting_jobs: int = option(16, "requests that may wait in line before visitors are told the model is busy")
    max_prompt_tokens: int = option(512, "longest prompt the live pages run, in tokens")
    max_new_tokens: int = option(128, "longest answer the Steering page generates")
    jobs_per_minute: int = option(20, "model computations one browser session may start per minute (answers another "
                                  "session already got are free)")
    model_threads: int | None = option(None, "torch threads for model work (default: the cores less one, which keeps "
                                       "the browsing pages quick while someone runs the model)")

    def __post_init__(self) -> None:
        for name in ("max_live_runs", "max_live_jobs", "max_prompt_tokens", "max_new_tokens", "jobs_per_minute",
                     "model_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_waiting_jobs < 0:
            raise UserError(f"--max-waiting-jobs must be 0 or more, got {self.max_waiting_jobs}")


@dataclass(frozen=True)
class AppOptions:
    """Where `sae-explorer app` listens, what it serves besides the runs named, and who may see it."""

    runs_dir: str | None = option(None, "serve every run folder directly under this folder (runs added later appear) "
                                  "(default: ./runs when no run is named)")
    port: int = option(8501, "port to serve on")
    host: str = option("127.0.0.1", "address to bind (default: 127.0.0.1, this machine only)")
    auth_token: str | None = option(None, f"token visitors must give (in the URL as ?token=… or a login box); also "
                                    f"read from ${AUTH_ENV}, which keeps it out of `ps` (default: none)")
    no_auth: bool = option(False, "serve a non-loopback --host without a token, on purpose", switch=True)


@dataclass(frozen=True)
class ServeSettings(ServeLimits):
    """What the app serves (`runs`: name → folder, `runs_dir`: every run directly under it) and its limits."""

    runs: dict[str, str] = field(default_factory=dict)
    runs_dir: str | None = None

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

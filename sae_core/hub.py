"""Files on the Hugging Face Hub, named `hf:ORG/REPO[/PATH][@REV]`: fetched into huggingface_hub's own cache (resumable,
with its progress bars) or read from it when offline (`HF_HUB_OFFLINE=1`, or the Hub unreachable)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError, first_line

PREFIX = "hf:"
FILE_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors", ".json", ".gguf", ".bin", ".parquet")
"""A path with one of these suffixes names a file; any other path names a folder (fetched with all it holds)."""
_SPEC = re.compile(r"hf:([\w.-]+/[\w.-]+)(?:/([^@]+?))?/?(?:@([\w./-]+))?")


class HubError(UserError):
    """A Hub path that is malformed, missing, or not in the cache while the Hub cannot be reached."""


@dataclass(frozen=True)
class HubPath:
    """`hf:ORG/REPO[/PATH][@REV]`: a repository, a file or folder in it (empty: all of it) and a revision."""

    repo_id: str
    path: str = ""
    revision: str | None = None

    @property
    def is_file(self) -> bool:
        return self.path.lower().endswith(FILE_SUFFIXES)

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}" + (f"/{self.path}" if self.path else "") + (f"@{self.revision}" if self.revision else "")


def is_hub(spec: object) -> bool:
    """Whether `spec` names something on the Hub (`hf:…`)."""
    return str(spec).startswith(PREFIX)


def parse_hub(spec: str) -> HubPath:
    """`hf:ORG/REPO[/PATH][@REV]` as a `HubPath`, or HubError saying the form."""
    found = _SPEC.fullmatch(spec.strip())
    if not found:
        raise HubError(f"{spec!r} is not a Hub path; write hf:ORG/REPO, hf:ORG/REPO/PATH or either with @REVISION")
    return HubPath(found.group(1), (found.group(2) or "").strip("/"), found.group(3))


def unreachable_reason() -> str | None:
    """Why the Hub cannot be reached (offline mode, no route), or None if it may be; takes at most ~3 s."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct connection test says nothing when a proxy carries the traffic
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError as e:
        return f"{url.hostname} is unreachable: {e}"
    return None


def fetch(spec: str | HubPath) -> Path:
    """The local path of a Hub file or folder: from the cache when it is there and the Hub cannot be reached, else
    downloaded into the cache (an interrupted download resumes). HubError says what is missing and what to do."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    hub = parse_hub(spec) if isinstance(spec, str) else spec
    offline = unreachable_reason()
    try:
        if hub.is_file:
            return Path(hf_hub_download(hub.repo_id, hub.path, revision=hub.revision, local_files_only=offline is not None))
        folder = snapshot_download(hub.repo_id, revision=hub.revision, local_files_only=offline is not None,
                                   allow_patterns=[f"{hub.path}/*"] if hub.path else None)
    except LocalEntryNotFoundError:
        raise HubError(f"{hub} is not in the local Hugging Face cache and the Hub cannot be reached ({offline or 'offline'}); "
                       "download it where the Hub is reachable (the cache is $HF_HOME/hub), or pass a local path") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise HubError(f"could not fetch {hub}: {first_line(e, 300)}; check the repository, path and revision") from None
    local = Path(folder) / hub.path
    if not local.exists():
        raise HubError(f"{hub}: the repository has no {hub.path!r} at this revision; check the path")
    return local

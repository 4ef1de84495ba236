"""Where the data that ships with sae-explorer lives (the default corpus, the refusal contrast sets):
`$SAE_EXPLORER_DATA`, else the installed wheel's `sae_core/data/`, else a source checkout's `data/`."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "SAE_EXPLORER_DATA"


def data_root() -> Path:
    """The folder holding `corpus/` and `refusal/`."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    installed = Path(__file__).resolve().parent / "data"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "data"

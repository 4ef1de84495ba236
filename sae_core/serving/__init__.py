"""Serving runs to other people: which runs a server may open, what it keeps in memory, who may ask it for work.

No Streamlit here: the app (`explorer/state.py`) applies these rules; tests call them directly.
"""

from .access import TokenCheck
from .catalog import RunCatalog
from .limits import Busy, JobQueue, LRUCache, RateLimited, RateLimiter
from .settings import AUTH_ENV, SERVE_ENV, ServeSettings
from .stores import StoreShelf

__all__ = [
    "AUTH_ENV", "Busy", "JobQueue", "LRUCache", "RateLimited", "RateLimiter", "RunCatalog", "SERVE_ENV", "ServeSettings",
    "StoreShelf", "TokenCheck",
]

"""The access token of a server shared with others: given once in the URL (`?token=…`) or a login box."""

from __future__ import annotations

import hashlib
import hmac


class TokenCheck:
    """Compares offered tokens with the server's in constant time; keeps only a digest of it."""

    def __init__(self, token: str | None):
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    @property
    def required(self) -> bool:
        return self._digest is not None

    def accepts(self, offered: str | None) -> bool:
        """True when no token is required, or `offered` is the token."""
        if self._digest is None:
            return True
        if not offered:
            return False
        return hmac.compare_digest(hashlib.sha256(offered.encode()).digest(), self._digest)

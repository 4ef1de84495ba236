"""A chat model behind any OpenAI-compatible chat-completions server: vLLM, llama.cpp's server, Ollama, TGI, OpenAI.

Requests go out concurrently (the server batches them). Yes/no answers use the reply's first-token
log-probabilities when the server returns them (`logprobs` / `top_logprobs`), else the reply's first word.
A server error (HTTP 5xx, 429, a timeout) is retried a few times with back-off; what still fails, or a
reply that is not the expected JSON, raises `RemoteModelError` naming the server and what it returned.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import UserError
from .chat_models import Messages

API_KEY_ENV = ("SAE_EXPLORER_API_KEY", "OPENAI_API_KEY")
"""Environment variables read (in this order) for a bearer token; keys never go on the command line."""
RETRY_STATUS = {429, 500, 502, 503, 504}


class RemoteModelError(UserError):
    """The chat-completions server failed or answered something that is not a chat completion."""


def completions_url(url: str) -> str:
    """`http://host:8000/v1` or `…/v1/chat/completions` → the chat-completions endpoint."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UserError(f"server URL {url!r} must start with http:// or https://, e.g. http://127.0.0.1:8000/v1")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class RemoteChatModel:
    """Chat completions from a server; `model` is the name it serves (asked of `GET /models` when not given)."""

    def __init__(self, url: str, model: str | None = None, *, timeout: float = 120.0, concurrency: int = 8, retries: int = 2):
        self.url = completions_url(url)
        self.timeout, self.concurrency, self.retries = timeout, max(1, concurrency), retries
        self.api_key = next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self.model = model or self._served_model()
        self.name = f"{self.model}@{self.url.removesuffix('/chat/completions')}"
        self._logprobs = True  # until the server refuses them

    # -- the ChatModel calls ------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int) -> list[str]:
        bodies = [{"messages": m, "max_tokens": max_new_tokens} for m in conversations]
        return [_reply_text(r, self.url) for r in self._post_all(bodies)]

    def yes_probabilities(self, groups: Sequence[Sequence[Messages]]) -> list[list[float | None]]:
        chats = [m for group in groups for m in group]
        answers = iter(self._yes_no(chats))
        return [[next(answers) for _ in group] for group in groups]

    # -- internals ----------------------------------------------------------------------------------

    def _yes_no(self, chats: list[Messages]) -> list[float | None]:
        body = {"max_tokens": 1}
        if self._logprobs:
            try:
                replies = self._post_all([{**body, "messages": m, "logprobs": True, "top_logprobs": 10} for m in chats])
            except RemoteModelError as e:
                if "HTTP 400" not in str(e) and "HTTP 422" not in str(e):
                    raise
                self._logprobs = False  # the server does not do log-probabilities: read the answer's first word
        if not self._logprobs:
            replies = self._post_all([{**body, "messages": m} for m in chats])
        return [_yes_probability(r, self.url) for r in replies]

    def _post_all(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._post, bodies))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps({"model": self.model, "temperature": 0, **body}).encode()
        return self._request(urllib.request.Request(self.url, data=payload, headers=self._headers(), method="POST"))

    def _served_model(self) -> str:
        url = self.url.removesuffix("/chat/completions") + "/models"
        listing = self._request(urllib.request.Request(url, headers=self._headers()))
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise RemoteModelError(f"{url} lists no model; name the served model with --explainer / --scorer") from None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _request(self, request: urllib.request.Request) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            retry = attempt < self.retries
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                if retry and e.code in RETRY_STATUS:
                    time.sleep(0.5 * 2**attempt)
                    continue
                detail = e.read()[:200].decode("utf-8", "replace").strip()
                raise RemoteModelError(f"{request.full_url} answered HTTP {e.code} ({detail or e.reason}); check the server's log") from None
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if retry:
                    time.sleep(0.5 * 2**attempt)
                    continue
                what = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else f"failed ({reason})"
                raise RemoteModelError(
                    f"the request to {request.full_url} {what} after {self.retries + 1} tries; is the server running and "
                    f"reachable (raise --timeout for a slow one)?"
                ) from None
            try:
                return json.loads(raw)
            except ValueError:
                snippet = raw[:80].decode("utf-8", "replace")
                raise RemoteModelError(f"{request.full_url} answered with something that is not JSON ({snippet!r}); "
                                       "is that URL an OpenAI-compatible server (…/v1)?") from None
        raise AssertionError("unreachable")


def _choice(reply: dict[str, Any], url: str) -> dict[str, Any]:
    try:
        choice = reply["choices"][0]
        if not isinstance(choice, dict):
            raise TypeError
        return choice
    except (KeyError, IndexError, TypeError):
        raise RemoteModelError(f"{url} answered JSON without choices[0] ({json.dumps(reply)[:120]}); "
                               "is it an OpenAI-compatible chat-completions server?") from None


def _reply_text(reply: dict[str, Any], url: str) -> str:
    content = (_choice(reply, url).get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


def _yes_probability(reply: dict[str, Any], url: str) -> float | None:
    """From the first token's top log-probabilities if present, else from the reply's first word."""
    choice = _choice(reply, url)
    tokens = ((choice.get("logprobs") or {}).get("content") or [])
    if tokens and isinstance(tokens[0], dict):
        p = {"yes": 0.0, "no": 0.0}
        for alt in tokens[0].get("top_logprobs") or []:
            word = str(alt.get("token", "")).strip().lower()
            if word in p and isinstance(alt.get("logprob"), (int, float)):
                p[word] += math.exp(alt["logprob"])
        if p["yes"] + p["no"] > 0:
            return p["yes"] / (p["yes"] + p["no"])
    words = _reply_text(reply, url).strip().lower().split()
    first = words[0].strip(".,!:;\"'") if words else ""
    return 1.0 if first == "yes" else 0.0 if first == "no" else None

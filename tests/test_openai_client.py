"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1 with canned replies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sae_core.interp.openai_client import RemoteChatModel, RemoteModelError, completions_url

Reply = Callable[[dict], tuple[int, bytes]]


class StubServer:
    """A chat-completions server whose answer to each request is decided by `reply(body) -> (status, bytes)`."""

    def __init__(self, reply: Reply):
        self.reply = reply
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "stub-model"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({**body, "_auth": self.headers.get("Authorization")})
                status, payload = stub.reply(body)
                self._send(status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def start(reply: Reply) -> StubServer:
        servers.append(StubServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def completion(content: str, top: dict[str, float] | None = None) -> bytes:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": content}}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": content, "logprob": 0.0,
                                           "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()]}]}
    return json.dumps({"choices": [choice]}).encode()


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_generation_and_yes_probabilities_with_logprobs(stub, monkeypatch):
    monkeypatch.setenv("SAE_EXPLORER_API_KEY", "secret")

    def reply(body):
        if body.get("logprobs"):
            return 200, completion("Yes", {"Yes": -0.1, " yes": -3.0, "No": -2.5})
        return 200, completion(f"echo {body['messages'][-1]['content']}")

    server = stub(reply)
    model = RemoteChatModel(server.url, concurrency=3)
    assert model.model == "stub-model" and model.name == f"stub-model@{server.url}"
    assert model.generate([chat("a"), chat("b"), chat("c")], 20) == ["echo a", "echo b", "echo c"]  # in order
    [[p1, p2], [p3]] = model.yes_probabilities([[chat("x"), chat("y")], [chat("z")]])
    import math

    expected = (math.exp(-0.1) + math.exp(-3.0)) / (math.exp(-0.1) + math.exp(-3.0) + math.exp(-2.5))
    assert p1 == p2 == p3 == pytest.approx(expected)
    assert all(r["_auth"] == "Bearer secret" and r["temperature"] == 0 for r in server.requests)
    assert all(r["max_tokens"] == 1 for r in server.requests if r.get("logprobs"))


def test_a_server_without_logprobs_is_read_by_the_first_word(stub):
    def reply(body):
        if body.get("logprobs"):
            return 400, b'{"error": "logprobs are not supported"}'
        text = body["messages"][-1]["content"]
        return 200, completion({"x": "Yes.", "y": " no, it does not", "z": "Maybe"}[text])

    model = RemoteChatModel(stub(reply).url, "m")
    assert model.yes_probabilities([[chat("x"), chat("y"), chat("z")]]) == [[1.0, 0.0, None]]


def test_http_500_is_retried_then_reported(stub):
    calls = []

    def flaky(body):
        calls.append(1)
        return (500, b"overloaded") if len(calls) < 3 else (200, completion("fine"))

    assert RemoteChatModel(stub(flaky).url, "m", retries=2).generate([chat("a")], 5) == ["fine"]
    always = stub(lambda body: (500, b"internal error: out of memory"))
    with pytest.raises(RemoteModelError, match="HTTP 500 .*out of memory.*check the server's log"):
        RemoteChatModel(always.url, "m", retries=1).generate([chat("a")], 5)


def test_malformed_json_and_missing_choices_are_clear_errors(stub):
    with pytest.raises(RemoteModelError, match="not JSON .*OpenAI-compatible"):
        RemoteChatModel(stub(lambda b: (200, b"<html>hello</html>")).url, "m").generate([chat("a")], 5)
    with pytest.raises(RemoteModelError, match="without choices"):
        RemoteChatModel(stub(lambda b: (200, b'{"result": "ok"}')).url, "m").generate([chat("a")], 5)


def test_a_timeout_is_a_clear_error(stub):
    def slow(body):
        time.sleep(1.0)
        return 200, completion("late")

    model = RemoteChatModel(stub(slow).url, "m", timeout=0.2, retries=1)
    with pytest.raises(RemoteModelError, match="timed out after 2 tries.*--timeout"):
        model.generate([chat("a")], 5)


def test_unreachable_server_and_bad_urls():
    with pytest.raises(RemoteModelError, match="failed .*is the server running"):
        RemoteChatModel("http://127.0.0.1:9/v1", "m", retries=0).generate([chat("a")], 5)
    with pytest.raises(Exception, match="must start with http"):
        completions_url("localhost:8000")
    assert completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"

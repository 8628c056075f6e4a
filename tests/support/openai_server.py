"""A real OpenAI-compatible HTTP server on loopback, scripted per test.

`responder(request_json) -> str | Fault` decides each reply: a string becomes
the assistant message content; a Fault injects an HTTP status, a delay, a cut
connection or a malformed body. Every request is recorded in `requests`, its
arrival time (time.monotonic) in `times` and its headers in `headers`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from tests.support.loopback import Served


@dataclass
class Fault:
    status: int | None = None  # e.g. 429, 500
    delay_s: float = 0.0
    cut: bool = False  # close the connection without a reply
    malformed: bool = False  # 200 with a body that is not JSON
    content: str | None = None  # content to send after the delay (when no status)


Responder = Callable[[dict], "str | Fault"]


def echo_responder(request: dict) -> str:
    return "echo: " + request["messages"][-1]["content"][:200]


def prefers_longer(request: dict) -> str:
    """A scripted pairwise judge: the longer answer wins every criterion."""
    text = request["messages"][-1]["content"]
    criteria = re.search(r"Judge these criteria: (.+)", text).group(1).split(", ")
    a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", text, re.S).group(1)
    b = re.search(r"Answer B:\n(.*?)\n\nJudge these", text, re.S).group(1)
    winner = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
    return json.dumps({c: {"winner": winner, "reason": "More detail."} for c in criteria})


class FakeOpenAIServer(Served):
    def __init__(self, responder: Responder = echo_responder, api_key: str | None = None):
        self.responder = responder
        self.api_key = api_key
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, b'{"error": {"message": "bad key"}}')
                    return
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, b'{"error": {"message": "bad key"}}')
                    return
                request = json.loads(raw)
                with server.lock:
                    server.requests.append(request)
                    server.times.append(time.monotonic())
                    server.headers.append(dict(self.headers.items()))
                reply = server.responder(request)
                if isinstance(reply, Fault):
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    if reply.cut:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if reply.status:
                        self._send(reply.status, json.dumps({"error": {"message": f"injected {reply.status}"}}).encode())
                        return
                    if reply.malformed:
                        self._send(200, b'{"choices": [ this is not json')
                        return
                    reply = reply.content or ""
                prompt_tokens = sum(len(m.get("content", "").split()) for m in request.get("messages", []))
                body = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "fake"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(reply.split()),
                        "total_tokens": prompt_tokens + len(reply.split()),
                    },
                }
                self._send(200, json.dumps(body).encode())

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

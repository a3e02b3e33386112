"""A local OpenAI-shaped upstream on 127.0.0.1 that counts calls and records what it got."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A prompt containing this makes the upstream fail with 500.
FAIL_MARKER = "please-fail"
#: A prompt containing this makes the upstream answer 307 to ``Upstream.redirect_to``.
REDIRECT_MARKER = "please-redirect"


def prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return str(body["messages"][-1]["content"])
    return str(body.get("prompt", ""))


def usage_for(prompt: str) -> dict[str, Any]:
    """Deterministic usage: the upstream's own answer, recomputed by tests."""
    words = len(prompt.split())
    return {"prompt_tokens": 10 + words, "completion_tokens": 5 + words % 7,
            "total_tokens": 15 + words + words % 7,
            "prompt_tokens_details": {"cached_tokens": 3}}


class Upstream:
    """Start with ``with Upstream() as up:``; ``up.url``, ``up.calls``, ``up.requests``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.redirect_to = ""
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with upstream._lock:
                    upstream.requests.append((self.path, dict(self.headers), body))
                    number = len(upstream.requests)
                prompt = prompt_of(body)
                if FAIL_MARKER in prompt:
                    self._send(500, b'{"error": {"message": "upstream broke", "type": "x"}}')
                    return
                if REDIRECT_MARKER in prompt:
                    self.send_response(307)
                    self.send_header("Location", upstream.redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body.get("stream"):
                    self._stream(body, prompt, number)
                    return
                answer = {
                    "id": f"cmpl-{number}", "object": "chat.completion", "created": 1,
                    "model": f"{body['model']}-2024-01-01",
                    "choices": [{"index": 0, "message": {"role": "assistant",
                                                         "content": f"answer {number}"},
                                 "finish_reason": "stop"}],
                    "usage": usage_for(prompt),
                }
                self._send(200, json.dumps(answer).encode())

            def _stream(self, body: dict[str, Any], prompt: str, number: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                chunks = [{"id": f"s-{number}", "choices": [{"delta": {"content": "hi"}}]},
                          {"id": f"s-{number}", "choices": [], "usage": usage_for(prompt)}]
                for chunk in chunks:
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

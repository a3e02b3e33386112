"""A local OpenAI- and Anthropic-shaped upstream on 127.0.0.1 for the gateway's tests.

It answers chat completions and Anthropic messages, streamed or not, as the providers do:
an OpenAI stream reports its usage only when the request asks for it
(``stream_options.include_usage``), an Anthropic stream in ``message_start`` and
``message_delta``. Each answer's usage is drawn at random (within the request's output limit
and its size) and recorded with the moment it was answered, so that tests price what the
upstream said independently of the gateway.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from costflux.embedded import free_port


@dataclass(frozen=True, slots=True)
class Answered:
    """One request the upstream answered."""

    path: str
    authorization: str
    arrived: float  # time.monotonic() in this process
    answered: float
    streamed: bool
    usage: dict[str, int]  # the usage contract's fields of the answer's usage


class FakeUpstream:
    """``with FakeUpstream(delay_s) as up``: ``up.url``, ``up.answered``, ``up.requests``."""

    def __init__(self, delay_s: float = 0.0, seed: int = 7) -> None:
        self.delay_s = delay_s
        self.url = ""
        self.answered: list[Answered] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeUpstream:
        started = threading.Event()
        port = free_port()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/messages", self._messages)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", port).start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-upstream", daemon=True)
        self._thread.start()
        assert started.wait(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def answers_for(self, authorization: str) -> list[Answered]:
        with self._lock:
            return [a for a in self.answered if a.authorization == authorization]

    def _draw(self, body: dict[str, Any], size: int, limit_field: str) -> tuple[int, int, int]:
        """Input, output and cache-read tokens: input at most a quarter of the body's bytes
        (real tokenizers average about four characters a token), output within its limit."""
        limit = body.get(limit_field) or body.get("max_tokens") or 1000
        with self._lock:
            input_tokens = self._rng.randint(size // 8, size // 4)
            output = self._rng.randint(1, int(limit))
            cached = self._rng.choice((0, 0, input_tokens // 2))
        return input_tokens, output, cached

    async def _record(self, request: web.Request) -> tuple[dict[str, Any], int, float]:
        arrived = time.monotonic()
        raw = await request.read()
        body = orjson.loads(raw)
        with self._lock:
            self.requests.append((request.path, dict(request.headers), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return body, len(raw), arrived

    def _answered(self, request: web.Request, arrived: float, streamed: bool,
                  usage: dict[str, int]) -> None:
        answered = Answered(request.path, request.headers.get("Authorization", "")
                            or request.headers.get("x-api-key", ""), arrived,
                            time.monotonic(), streamed, usage)
        with self._lock:
            self.answered.append(answered)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, size, arrived = await self._record(request)
        prompt, output, cached = self._draw(body, size, "max_completion_tokens")
        usage = {"prompt_tokens": prompt, "completion_tokens": output,
                 "total_tokens": prompt + output,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        contract = {"input_tokens": prompt, "output_tokens": output,
                    "cached_input_tokens": cached}
        if not body.get("stream"):
            self._answered(request, arrived, False, contract)
            return web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": body["model"], "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "fine"}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body["model"]}
        await _event(response, {**chunk, "choices": [{"index": 0, "delta": {"content": "fi"}}]})
        await _event(response, {**chunk, "choices": [{"index": 0, "delta": {"content": "ne"},
                                                      "finish_reason": "stop"}]})
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        if asked:  # as OpenAI: the usage chunk only when asked for
            await _event(response, {**chunk, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self._answered(request, arrived, True, contract if asked else {})
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, size, arrived = await self._record(request)
        fresh, output, reads = self._draw(body, size, "max_tokens")
        writes = reads // 3
        contract = {"input_tokens": fresh + reads + writes, "output_tokens": output,
                    "cached_input_tokens": reads}
        if writes:
            contract["cache_write_input_tokens"] = writes
        start_usage = {"input_tokens": fresh, "cache_read_input_tokens": reads,
                       "cache_creation_input_tokens": writes, "output_tokens": 1}
        if not body.get("stream"):
            self._answered(request, arrived, False, contract)
            return web.json_response({
                "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn",
                "usage": {**start_usage, "output_tokens": output}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for name, data in (
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [], "usage": start_usage}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "fine"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": output}}),
            ("message_stop", {"type": "message_stop"}),
        ):
            await response.write(b"event: " + name.encode() + b"\n")
            await _event(response, data)
        await response.write_eof()
        self._answered(request, arrived, True, contract)
        return response


async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + orjson.dumps(data) + b"\n\n")


@contextmanager
def fake_upstream(delay_s: float = 0.0) -> Iterator[FakeUpstream]:
    with FakeUpstream(delay_s) as upstream:
        yield upstream

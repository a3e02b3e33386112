"""Usage events of proxied requests, and the token usage a streamed answer reports. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from costflux.cache.policy import TokenUsage, token_usage

__all__ = ["StreamUsageScanner", "usage_event"]


def usage_event(*, event_id: str, ts: datetime, model: str, usage: TokenUsage | None,
                labels: Mapping[str, str], latency_ms: float, ok: bool,
                cache_hit: bool) -> dict[str, Any]:
    """The ``llm.usage.v1`` event of one proxied request.

    On a hit the tokens are the cached answer's: the tokens that were not sent upstream, which
    the pipeline prices as savings. A request whose answer reported no usage carries 0 tokens.

    >>> from datetime import UTC
    >>> usage_event(event_id="cache:1", ts=datetime(2024, 5, 1, 12, tzinfo=UTC), model="gpt-4",
    ...             usage=TokenUsage(10, 2), labels={"team": "a"}, latency_ms=1.5, ok=True,
    ...             cache_hit=True)["cache_hit"]
    True
    """
    tokens = usage or TokenUsage(0, 0)
    return {
        "event_id": event_id,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "model": model,
        "input_tokens": tokens.input_tokens,
        "output_tokens": tokens.output_tokens,
        "cached_input_tokens": tokens.cached_input_tokens,
        "latency_ms": round(max(latency_ms, 0.0), 3),
        "status": "ok" if ok else "error",
        "labels": dict(labels),
        "cache_hit": cache_hit,
    }


class StreamUsageScanner:
    """Finds the ``usage`` object in a server-sent-events stream as its bytes pass by.

    OpenAI sends it in the last chunk when the request asks for
    ``stream_options: {"include_usage": true}``; without it a streamed answer reports none.
    """

    def __init__(self) -> None:
        self._pending = b""
        self.usage: TokenUsage | None = None

    def feed(self, chunk: bytes) -> None:
        """Read another piece of the stream (pieces may split lines anywhere)."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._read_line(line.strip())

    def close(self) -> None:
        """Read a last line that had no newline."""
        self._read_line(self._pending.strip())
        self._pending = b""

    def _read_line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[len(b"data:"):].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(data, dict):
            usage = token_usage(data)
            if usage is not None:
                self.usage = usage

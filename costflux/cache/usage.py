"""Usage events of proxied requests. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["usage_event"]


def usage_event(*, event_id: str, ts: datetime, model: str, usage: Mapping[str, int] | None,
                labels: Mapping[str, str], latency_ms: float, ok: bool,
                cache_hit: bool) -> dict[str, Any]:
    """The ``llm.usage.v1`` event of one proxied request; ``usage`` is the usage contract's
    token fields (costflux.gateway.usage), every part of the bill the answer reported.

    On a hit the tokens are the cached answer's: the tokens that were not sent upstream, which
    the pipeline prices as savings. A request whose answer reported no usage carries 0 tokens.

    >>> from datetime import UTC
    >>> usage_event(event_id="cache:1", ts=datetime(2024, 5, 1, 12, tzinfo=UTC), model="gpt-4",
    ...             usage={"input_tokens": 10, "output_tokens": 2}, labels={"team": "a"},
    ...             latency_ms=1.5, ok=True, cache_hit=True)["cache_hit"]
    True
    """
    return {
        "event_id": event_id,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "model": model,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_input_tokens": 0,
        **(usage or {}),
        "latency_ms": round(max(latency_ms, 0.0), 3),
        "status": "ok" if ok else "error",
        "labels": dict(labels),
        "cache_hit": cache_hit,
    }


"""Prometheus metrics, with label values bounded by an allow-list and a cap."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from costflux.core.money import pico_to_dollars

__all__ = ["CostMetrics", "LabelLimiter"]

OVERFLOW = "other"


class LabelLimiter:
    """Keeps a label's distinct values under a cap; values past it are reported as 'other'.

    >>> limiter = LabelLimiter(cap=1, allowed=["search"])
    >>> [limiter("search"), limiter("ads"), limiter("chat")]
    ['search', 'ads', 'other']
    """

    def __init__(self, cap: int, allowed: Iterable[str] = ()) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self._allowed = frozenset(allowed)
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._allowed or value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._cap:
                self._seen.add(value)
                return value
        return OVERFLOW


class CostMetrics:
    """Every metric a worker exports, on one injectable registry."""

    COST_LABELS = ("model", "team", "namespace")

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        label_cap: int = 100,
        allowed: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        allowed = allowed or {}
        self._limit = {
            name: LabelLimiter(label_cap, allowed.get(name, ())) for name in self.COST_LABELS
        }
        labels = self.COST_LABELS
        self.cost = Counter(
            "llm_request_cost_dollars", "Token cost of requests, USD", labels,
            registry=self.registry,
        )
        self.requests = Counter(
            "llm_requests", "Requests counted (duplicates once)", labels, registry=self.registry
        )
        self.tokens = Counter(
            "llm_tokens", "Tokens by direction", (*labels, "direction"), registry=self.registry
        )
        self.deadletters = Counter(
            "costflux_deadletter", "Inputs sent to the dead-letter topic, by reason",
            ("reason",), registry=self.registry,
        )
        self.duplicates = Counter(
            "costflux_duplicates", "Events dropped as duplicates of an earlier event_id",
            registry=self.registry,
        )
        self.ingested = Counter(
            "costflux_ingest_events", "Events priced and pre-aggregated by ingest",
            registry=self.registry,
        )
        self.replayed_partials = Counter(
            "costflux_partials_replayed", "Partials skipped because their offsets were applied",
            registry=self.registry,
        )
        self.watermark = Gauge(
            "costflux_watermark_timestamp_seconds",
            "Event time before which every active partition is complete",
            registry=self.registry,
        )

    def count_row(self, dims: tuple[str, ...], sums: list[int]) -> None:
        """Add one applied aggregate row: dims in DIMENSIONS order, sums in SUM_FIELDS order."""
        model, team, _project, _app, namespace = dims
        labels = (self._limit["model"](model), self._limit["team"](team),
                  self._limit["namespace"](namespace))
        cost_pico, input_tokens, output_tokens, cached, requests = sums
        self.cost.labels(*labels).inc(pico_to_dollars(cost_pico))
        self.requests.labels(*labels).inc(requests)
        self.tokens.labels(*labels, "input").inc(input_tokens)
        self.tokens.labels(*labels, "output").inc(output_tokens)
        self.tokens.labels(*labels, "cached_input").inc(cached)

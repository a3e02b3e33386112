"""Prometheus metrics, with label values bounded by an allow-list and a cap."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

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
        self._children: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._cache_cap = 4 * label_cap**2
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
        children = self._children.get((model, team, namespace))
        if children is None:
            children = self._children_for(model, team, namespace)
        cost_pico, input_tokens, output_tokens, cached, requests = sums
        cost, count, tokens_in, tokens_out, tokens_cached = children
        cost.inc(pico_to_dollars(cost_pico))
        count.inc(requests)
        tokens_in.inc(input_tokens)
        tokens_out.inc(output_tokens)
        tokens_cached.inc(cached)

    def _children_for(self, model: str, team: str, namespace: str) -> tuple[Any, ...]:
        # labels() costs more than the increments; resolve each dimension triple once. The
        # cache is bounded like the labels themselves: past the cap, triples share 'other'.
        labels = (self._limit["model"](model), self._limit["team"](team),
                  self._limit["namespace"](namespace))
        children = (
            self.cost.labels(*labels),
            self.requests.labels(*labels),
            self.tokens.labels(*labels, "input"),
            self.tokens.labels(*labels, "output"),
            self.tokens.labels(*labels, "cached_input"),
        )
        if len(self._children) < self._cache_cap:
            self._children[(model, team, namespace)] = children
        return children

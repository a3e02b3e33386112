"""Prometheus metrics, with label values bounded by an allow-list and a cap."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from costflux.core.gpu import UNITS_PER_PICO, price_of_rates
from costflux.core.gpu_samples import GpuCandidate
from costflux.core.money import PICO_PER_DOLLAR, pico_to_dollars
from costflux.core.rows import DimKey, GpuDims, GpuSums, UsageSums

__all__ = ["CostMetrics", "LabelLimiter"]

OVERFLOW = "other"
#: A GPU this many of its sampling intervals behind its node's newest sample stopped reporting.
STALE_INTERVALS = 3


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

    COST_LABELS = ("model", "team", "app", "namespace")
    #: Labels kept out of the cost series' combinations (end users can number hundreds of
    #: thousands): each gets series of its own, capped like the others.
    PRINCIPAL_LABELS = ("api_key", "end_user")

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        label_cap: int = 100,
        allowed: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        allowed = allowed or {}
        self._cap = label_cap
        self._allowed = allowed
        self._children: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        self._cache_cap = 4 * label_cap**2
        self._limit = {
            name: LabelLimiter(label_cap, allowed.get(name, ()))
            for name in (*self.COST_LABELS, *self.PRINCIPAL_LABELS)
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
        self.semantic_cache_savings = Counter(
            "llm_cache_savings_dollars",
            "Cost the semantic cache avoided: its hits' tokens at the model's price, USD",
            labels, registry=self.registry,
        )
        self.semantic_cache_hits = Counter(
            "llm_cache_hits", "Requests answered by the semantic cache (also in llm_requests)",
            labels, registry=self.registry,
        )
        self.principal_cost = {
            label: Counter(f"llm_{label}_cost_dollars", f"Token cost of requests by {label} "
                           "(the gateway's key id or end user), USD", (label,),
                           registry=self.registry)
            for label in self.PRINCIPAL_LABELS
        }
        self.principal_requests = {
            label: Counter(f"llm_{label}_requests", f"Requests counted by {label}", (label,),
                           registry=self.registry)
            for label in self.PRINCIPAL_LABELS
        }
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
        self.overflowed_rows = Counter(
            "costflux_overflowed_rows", "New label combinations a full window folded into "
            "its model's __overflow__ row (money exact, label detail lost; see "
            "COSTFLUX_WINDOW_MAX_ROWS)",
            registry=self.registry,
        )
        self.resyncs = Counter(
            "costflux_ingest_resyncs",
            "Times ingest found a partition's offset in the cost store other than it expected "
            "(another worker applied the range, or the store lost writes) and resumed from "
            "the store", ("kind",), registry=self.registry,
        )
        self.lost_messages = Counter(
            "costflux_ingest_lost_messages",
            "Messages the topic's retention deleted before any worker applied them (found "
            "where a partition resumes below the topic's oldest offset)", ("kind",),
            registry=self.registry,
        )
        self.unapplied = Gauge(
            "costflux_ingest_unapplied_messages",
            "Messages ingest has consumed and not yet applied to the cost store (buffered, "
            "being judged or being applied)", ("kind",), registry=self.registry,
        )
        self.flush_apply_seconds = Histogram(
            "costflux_flush_apply_seconds",
            "Time to apply one flush (all its partitions) to the cost store, dead letters "
            "published first", ("kind",), registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self._add_gpu_metrics()
        self.watermark = Gauge(
            "costflux_watermark_timestamp_seconds",
            "Event time before which every active partition is complete",
            registry=self.registry,
        )

    def _add_gpu_metrics(self) -> None:
        gpu_labels = ("node", "gpu_type", "pricing_tier", "namespace", "model")
        # model and namespace share the cost metrics' limiters: one cap, one set of values.
        self._limit["node"] = LabelLimiter(self._cap, self._allowed.get("node", ()))
        self.gpu_cost = Counter(
            "llm_gpu_cost_dollars", "GPU cost (all GPU time at its tier's price), USD",
            gpu_labels, registry=self.registry,
        )
        self.gpu_idle_cost = Counter(
            "llm_gpu_idle_cost_dollars", "GPU cost of time under the idle threshold, USD",
            gpu_labels, registry=self.registry,
        )
        self.gpu_samples = Counter(
            "costflux_gpu_samples", "GPU samples priced and pre-aggregated by ingest",
            registry=self.registry,
        )
        # One series per GPU that reports; a GPU that stops reporting loses its series (absent,
        # never a made-up 0), so the series are bounded by the live fleet.
        self.gpu_utilization = Gauge(
            "llm_gpu_utilization_ratio", "Busy / allocated time of a GPU in its latest sample",
            ("node", "gpu_uuid", "gpu_type"), registry=self.registry,
        )
        self._latest_gpu: dict[str, tuple[str, str, int, int]] = {}  # uuid -> node, type, ts, ms
        self._gpu_children: dict[tuple[str, ...], tuple[Any, Any, float]] = {}
        self._unit_cost_models: set[str] = set()
        self.cost_per_request = Gauge(
            "llm_cost_per_request_dollars",
            "Token plus allocated GPU cost per request over the last complete hour",
            ("model",), registry=self.registry,
        )
        self.cost_per_token = Gauge(
            "llm_cost_per_token_dollars",
            "Token plus allocated GPU cost per token over the last complete hour",
            ("model",), registry=self.registry,
        )

    def count_gpu_row(self, dims: GpuDims, sums: GpuSums) -> None:
        """Add one applied GPU row."""
        node, gpu_type, tier, namespace, model, _team, rates = dims
        children = self._gpu_children.get((node, gpu_type, tier, namespace, model, rates))
        if children is None:
            labels = (self._limit["node"](node), gpu_type, tier,
                      self._limit["namespace"](namespace), self._limit["model"](model))
            # Dollars per GPU-millisecond, as a float: metrics are a presentation edge.
            per_ms = price_of_rates(rates).per_hour(tier) / (UNITS_PER_PICO * PICO_PER_DOLLAR)
            children = (self.gpu_cost.labels(*labels), self.gpu_idle_cost.labels(*labels), per_ms)
            if len(self._gpu_children) < self._cache_cap:
                self._gpu_children[(node, gpu_type, tier, namespace, model, rates)] = children
        cost, idle_cost, per_ms = children
        cost.inc(sums.gpu_ms * per_ms)
        idle_cost.inc(sums.idle_ms * per_ms)

    def observe_gpu_samples(self, samples: Iterable[GpuCandidate]) -> None:
        """Set each GPU's utilization from its newest sample; drop GPUs that stopped reporting.

        Staleness is judged in event time, per node: a GPU whose newest sample is more than
        ``STALE_INTERVALS`` of its intervals behind its node's newest sample has stopped
        reporting (its sidecar skipped it), and its series is removed.
        """
        newest: dict[str, GpuCandidate] = {}  # per GPU: one gauge update per flush
        count = 0
        for sample in samples:
            count += 1
            current = newest.get(sample.gpu_uuid)
            if current is None or sample.ts_ms >= current.ts_ms:
                newest[sample.gpu_uuid] = sample
        for uuid, sample in newest.items():
            latest = self._latest_gpu.get(uuid)
            # A MIG instance has no measured utilization: no gauge rather than a made-up one.
            if sample.utilization_pct is not None and (latest is None or sample.ts_ms >= latest[2]):
                gpu_type = sample.dims[1]
                node = sample.dims[0]
                self._latest_gpu[uuid] = (node, gpu_type, sample.ts_ms, sample.interval_ms)
                self.gpu_utilization.labels(node, uuid, gpu_type).set(
                    sample.utilization_pct / 100
                )
        newest_on_node: dict[str, int] = {}
        self.gpu_samples.inc(count)
        for node, _type, ts_ms, _ms in self._latest_gpu.values():
            newest_on_node[node] = max(newest_on_node.get(node, ts_ms), ts_ms)
        for uuid, (node, gpu_type, ts_ms, interval_ms) in list(self._latest_gpu.items()):
            if newest_on_node[node] - ts_ms > STALE_INTERVALS * interval_ms:
                del self._latest_gpu[uuid]
                self.gpu_utilization.remove(node, uuid, gpu_type)

    def set_unit_costs(self, by_model: Mapping[str, tuple[float, float]]) -> None:
        """Set cost per request and per token for each model; drop models no longer present."""
        for model, (per_request, per_token) in by_model.items():
            label = self._limit["model"](model)
            self.cost_per_request.labels(label).set(per_request)
            self.cost_per_token.labels(label).set(per_token)
        shown = {self._limit["model"](model) for model in by_model}
        for gone in self._unit_cost_models - shown:
            self.cost_per_request.remove(gone)
            self.cost_per_token.remove(gone)
        self._unit_cost_models = shown

    def count_row(self, dims: DimKey, sums: UsageSums) -> None:
        """Add one applied usage row.

        Only model, team, app and namespace become labels (project, deployment and cluster
        would multiply the series; the allocation API has them).
        """
        model, team, app, namespace = dims[0], dims[1], dims[3], dims[4]
        children = self._children.get((model, team, app, namespace))
        if children is None:
            children = self._children_for(model, team, app, namespace)
        cost, count, tokens_in, tokens_out, tokens_cached, hits, savings = children
        cost.inc(pico_to_dollars(sums.cost_pico))
        count.inc(sums.requests)
        tokens_in.inc(sums.input_tokens)
        tokens_out.inc(sums.output_tokens)
        tokens_cached.inc(sums.cached_input_tokens)
        hits.inc(sums.semantic_cache_hits)
        savings.inc(pico_to_dollars(sums.semantic_saving_pico))

    def count_principal(self, label: str, value: str, sums: UsageSums) -> None:
        """Add one applied row of the per-key or per-user roll-up (costflux.core.spend)."""
        shown = self._limit[label](value)
        self.principal_cost[label].labels(shown).inc(pico_to_dollars(sums.cost_pico))
        self.principal_requests[label].labels(shown).inc(sums.requests)

    def _children_for(
        self, model: str, team: str, app: str, namespace: str
    ) -> tuple[Any, ...]:
        # labels() costs more than the increments; resolve each label combination once. The
        # cache is bounded like the labels themselves: past the cap, values share 'other'.
        labels = (self._limit["model"](model), self._limit["team"](team),
                  self._limit["app"](app), self._limit["namespace"](namespace))
        children = (
            self.cost.labels(*labels),
            self.requests.labels(*labels),
            self.tokens.labels(*labels, "input"),
            self.tokens.labels(*labels, "output"),
            self.tokens.labels(*labels, "cached_input"),
            self.semantic_cache_hits.labels(*labels),
            self.semantic_cache_savings.labels(*labels),
        )
        if len(self._children) < self._cache_cap:
            self._children[(model, team, app, namespace)] = children
        return children

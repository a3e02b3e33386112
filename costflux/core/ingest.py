"""Judge one source partition's messages: price, check time, and pre-aggregate what counts.

Pure and deterministic given the partition's messages, its starting clock and the wall clock
(only events too far in the future depend on it). Deduplication needs shared state and lives
in the cost store, between ``judge`` and ``aggregate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from costflux.core.aggregate import PartitionAggregate
from costflux.core.bill import request_cost
from costflux.core.events import Rejected, decode_usage_fields
from costflux.core.judging import Decoder, decoded, reject, with_context
from costflux.core.pricing import ModelPrice, PriceBook
from costflux.core.rows import DimKey
from costflux.schemas._types import epoch_ms
from costflux.schemas.deadletter import DeadLetterReason
from costflux.schemas.usage import UsageEvent

__all__ = ["Candidate", "IngestRules", "Judged", "PartitionClock", "aggregate", "judge",
           "lost_to_retention"]


@dataclass(frozen=True, slots=True)
class IngestRules:
    """The run-time rules every partition is judged by (from Settings)."""

    window_sizes_s: tuple[int, ...]
    allowed_lateness_ms: int
    max_future_ms: int
    gpu_idle_threshold_pct: float = 5.0  # a GPU sample under this utilization is idle time

    @property
    def finest_window_ms(self) -> int:
        return min(self.window_sizes_s) * 1000


@dataclass(slots=True)
class PartitionClock:
    """The newest event time seen on one partition; lateness is judged against it alone."""

    max_ts_ms: int | None = None

    def watermark_ms(self, allowed_lateness_ms: int) -> int | None:
        return None if self.max_ts_ms is None else self.max_ts_ms - allowed_lateness_ms


class Candidate(NamedTuple):
    """A valid, priced, on-time event, not yet checked for duplicates.

    A tuple, not a frozen dataclass: one is built per event, and tuples build 2x faster.
    """

    event_id: str
    position: str  # "offset" or "offset:index" in a batch: identifies a replay of itself
    ts_ms: int
    dims: DimKey
    cost_pico: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    gpu_ms: int  # the event's own gpu_seconds, in ms (0 when it carries none)
    cache_saving_pico: int  # what the prompt cache saved (ModelPrice.cache_saving; 0 uncached)
    #: None for a request the model served; for a semantic cache hit, what the request would
    #: have cost (its cost, tokens and GPU time above are then 0: nothing was sent upstream).
    semantic_saving_pico: int | None
    #: None for a request with only input, output and cache reads and no contract; else its
    #: whole bill's sums (``costflux.core.bill.BILL_FIELDS``).
    billed: tuple[int, ...] | None
    #: Who sent it: its ``api_key`` and ``end_user`` labels ("" where absent), counted apart
    #: from the windows (costflux.core.spend).
    principal: tuple[str, str] = ("", "")


CandidateT = TypeVar("CandidateT")


@dataclass(slots=True)
class Judged(Generic[CandidateT]):
    """The verdicts on one run of messages of one partition."""

    candidates: list[CandidateT] = field(default_factory=list)
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)  # (offset, verdict)


#: A valid usage event's fields, as costflux.core.events.decode_usage_fields gives them.
EventFields = Mapping[str, Any]
_NO_LABELS: Mapping[str, str] = {}

# Building a NamedTuple through its generated __new__ costs a Python call per event;
# tuple.__new__ builds the same object in C (the hot loop makes one per event).
_new_candidate = tuple.__new__


def judge(
    messages: Iterable[tuple[int, bytes | None]],
    clock: PartitionClock,
    prices: PriceBook,
    rules: IngestRules,
    now_wall_ms: int,
    decode: Decoder[EventFields] = decode_usage_fields,
) -> Judged[Candidate]:
    """Decode, validate, price and time-check messages given as (offset, value), in order.

    Checks, per event and in this order: not too far in the future, a price in force at its
    event time, not late against this partition's clock; then it advances the clock. This is
    the hot path (every event passes here): the per-event steps are inlined on purpose. A
    message ``decode`` raises on is a dead letter (``costflux.core.judging``).
    """
    judged: Judged[Candidate] = Judged()
    candidates = judged.candidates
    rejected = judged.rejected
    finest_ms = rules.finest_window_ms
    lateness_ms = rules.allowed_lateness_ms
    future_limit = now_wall_ms + rules.max_future_ms
    spans: dict[str, tuple[ModelPrice, int, int] | None] = {}  # model -> price and its span
    max_ts = clock.max_ts_ms
    watermark = clock.watermark_ms(lateness_ms)
    contracts = bool(prices.contracts)
    for offset, value, entries, batched in decoded(messages, decode, rejected):
        for index, entry in enumerate(entries):
            if isinstance(entry, Rejected):
                rejected.append((offset, entry))
                continue
            ts_ms = epoch_ms(entry["ts"])
            model = entry["model"]
            span = spans.get(model)
            if span is None or not span[1] <= ts_ms < span[2]:
                span = spans[model] = prices.model_price_span(model, ts_ms)
            if ts_ms > future_limit:
                verdict = _future(rules)
            elif span is None:
                verdict = _unpriced(entry)
            elif watermark is not None and ts_ms - ts_ms % finest_ms + finest_ms <= watermark:
                verdict = _late(rules)
            else:
                if max_ts is None or ts_ms > max_ts:
                    max_ts = clock.max_ts_ms = ts_ms
                    watermark = clock.watermark_ms(lateness_ms)
                price = span[0]
                # Optional fields are absent from the dict when the event leaves them out:
                # read with the model's defaults (costflux.schemas.usage.UsageEvent).
                cached = entry.get("cached_input_tokens", 0)
                labels = entry.get("labels", _NO_LABELS)
                position = f"{offset}:{index}" if batched else str(offset)
                dims = (model, labels.get("team", ""), labels.get("project", ""),
                        labels.get("app", ""), labels.get("namespace", ""),
                        entry.get("deployment") or labels.get("deployment", ""),
                        labels.get("cluster", ""))
                principal = (labels.get("api_key", ""), labels.get("end_user", ""))
                if entry.get("cache_hit"):
                    candidates.append(_semantic_cache_hit(
                        entry, cached, position, ts_ms, dims, price, principal))
                    continue
                input_tokens, output_tokens = entry["input_tokens"], entry["output_tokens"]
                gpu_seconds = entry.get("gpu_seconds")
                discount = prices.discount(model, price, ts_ms) if contracts else None
                cost, billed = request_cost(price, entry, discount)
                candidates.append(_new_candidate(Candidate, (
                    entry["event_id"],
                    position,
                    ts_ms,
                    dims,
                    cost,
                    input_tokens,
                    output_tokens,
                    cached,
                    round(gpu_seconds * 1000) if gpu_seconds else 0,
                    price.cache_saving(input_tokens, cached) if cached else 0,
                    None,
                    billed,
                    principal,
                )))
                continue
            rejected.append((offset, with_context(
                verdict, value, index if batched else None, entry, _as_written)))
    return judged


def _semantic_cache_hit(
    event: EventFields, cached: int, position: str, ts_ms: int, dims: DimKey, price: ModelPrice,
    principal: tuple[str, str],
) -> Candidate:
    """A request the semantic cache answered: a request served at no cost and no tokens, and
    the avoided cost, its tokens priced as the model would have billed them at ``ts_ms``."""
    avoided = price.cost(event["input_tokens"], event["output_tokens"], cached)
    return Candidate(event["event_id"], position, ts_ms, dims, 0, 0, 0, 0, 0, 0, avoided, None,
                     principal)


def _as_written(event: EventFields) -> bytes:
    return UsageEvent.model_construct(**event).model_dump_json().encode()


def _future(rules: IngestRules) -> Rejected:
    return reject(
        DeadLetterReason.FUTURE_TIMESTAMP,
        f"ts is more than {rules.max_future_ms // 1000}s ahead of the clock; "
        "check the producer's clock and time zone",
    )


def _unpriced(event: EventFields) -> Rejected:
    return reject(
        DeadLetterReason.UNKNOWN_MODEL,
        f"model {event['model']!r} has no price at {event['ts'].isoformat()}; "
        "add it to model_costs in pricing.yaml",
    )


def _late(rules: IngestRules) -> Rejected:
    return reject(
        DeadLetterReason.LATE,
        f"event time is more than the allowed lateness ({rules.allowed_lateness_ms} ms) "
        "behind its partition's newest event; its window has closed",
    )


def aggregate(candidates: Iterable[Candidate], finest_window_s: int) -> PartitionAggregate:
    """Pre-aggregate the candidates that survived deduplication."""
    totals = PartitionAggregate(finest_window_s)
    totals.add_all(candidates)
    return totals


def lost_to_retention(resume_at: Mapping[int, int], oldest: Mapping[int, int]
                      ) -> dict[int, range]:
    """Per partition, the offsets a topic's retention deleted before they were applied: from
    where the partition resumes up to (not including) the oldest offset the topic still
    holds. Empty where nothing was lost.

    >>> lost_to_retention({0: 100, 1: 50}, {0: 120, 1: 0})
    {0: range(100, 120)}
    """
    return {partition: range(next_offset, oldest[partition])
            for partition, next_offset in sorted(resume_at.items())
            if oldest.get(partition, 0) > next_offset}

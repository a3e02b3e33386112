"""Judge one source partition's messages: price, check time, and pre-aggregate what counts.

Pure and deterministic given the partition's messages and its starting clock, so a flush
replayed after a crash yields the same partials. Deduplication needs shared state and lives
in the adapter between ``judge`` and ``aggregate``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from costflux.core.aggregate import DimKey, PartitionAggregate
from costflux.core.events import Rejected, decode_usage_message
from costflux.core.pricing import PriceBook
from schemas._types import epoch_ms
from schemas.deadletter import DeadLetterReason
from schemas.usage import UsageEvent

__all__ = ["Candidate", "IngestRules", "Judged", "PartitionClock", "judge", "aggregate"]


@dataclass(frozen=True, slots=True)
class IngestRules:
    """The run-time rules every partition is judged by (from Settings)."""

    window_sizes_s: tuple[int, ...]
    allowed_lateness_ms: int
    max_future_ms: int

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


@dataclass(slots=True)
class Judged:
    """The verdicts on one run of messages of one partition."""

    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)  # (offset, verdict)


def judge(
    messages: Iterable[tuple[int, bytes | None]],
    clock: PartitionClock,
    prices: PriceBook,
    rules: IngestRules,
    now_wall_ms: int,
) -> Judged:
    """Decode, validate, price and time-check messages given as (offset, value), in order."""
    judged = Judged()
    finest_ms = rules.finest_window_ms
    future_limit = now_wall_ms + rules.max_future_ms
    for offset, value in messages:
        try:
            entries, batched = decode_usage_message(value)
        except Exception as exc:  # noqa: BLE001 - a poison message must not stop the partition
            detail = f"could not be decoded ({type(exc).__name__}); please report this input"
            judged.rejected.append(
                (offset, Rejected(DeadLetterReason.INVALID_VALUE, detail, None, value or b""))
            )
            continue
        for index, entry in enumerate(entries):
            if isinstance(entry, Rejected):
                judged.rejected.append((offset, entry))
                continue
            position = f"{offset}:{index}" if batched else str(offset)
            ts_ms = epoch_ms(entry.ts)
            verdict = _judge_event(entry, ts_ms, clock, prices, rules, finest_ms, future_limit)
            if isinstance(verdict, Rejected):
                judged.rejected.append(
                    (offset, _with_context(verdict, entry, index if batched else None, value))
                )
            else:
                judged.candidates.append(_candidate(entry, ts_ms, position, verdict))
    return judged


def _judge_event(
    event: UsageEvent, ts_ms: int, clock: PartitionClock, prices: PriceBook,
    rules: IngestRules, finest_ms: int, future_limit: int,
) -> int | Rejected:
    if ts_ms > future_limit:
        return _reject(
            DeadLetterReason.FUTURE_TIMESTAMP,
            f"ts is more than {rules.max_future_ms // 1000}s ahead of the clock; "
            "check the producer's clock and time zone",
        )
    price = prices.model_price(event.model, ts_ms)
    if price is None:
        return _reject(
            DeadLetterReason.UNKNOWN_MODEL,
            f"model {event.model!r} has no price at {event.ts.isoformat()}; "
            "add it to model_costs in pricing.yaml",
        )
    watermark = clock.watermark_ms(rules.allowed_lateness_ms)
    if watermark is not None and ts_ms - ts_ms % finest_ms + finest_ms <= watermark:
        return _reject(
            DeadLetterReason.LATE,
            f"event time is more than the allowed lateness ({rules.allowed_lateness_ms} ms) "
            "behind its partition's newest event; its window has closed",
        )
    if clock.max_ts_ms is None or ts_ms > clock.max_ts_ms:
        clock.max_ts_ms = ts_ms
    return price.cost(event.input_tokens, event.output_tokens, event.cached_input_tokens)


def _reject(reason: DeadLetterReason, detail: str) -> Rejected:
    return Rejected(reason, detail, None, b"")


def _with_context(
    verdict: Rejected, event: UsageEvent, index: int | None, value: bytes | None
) -> Rejected:
    original = (value or b"") if index is None else event.model_dump_json().encode()
    return Rejected(verdict.reason, verdict.detail, index, original)


def _candidate(event: UsageEvent, ts_ms: int, position: str, cost_pico: int) -> Candidate:
    labels = event.labels
    get = labels.get
    dims = (event.model, get("team", ""), get("project", ""), get("app", ""),
            get("namespace", ""))
    return Candidate(event.event_id, position, ts_ms, dims, cost_pico, event.input_tokens,
                     event.output_tokens, event.cached_input_tokens)


def aggregate(candidates: Iterable[Candidate], finest_window_s: int) -> PartitionAggregate:
    """Pre-aggregate the candidates that survived deduplication."""
    totals = PartitionAggregate(finest_window_s)
    for c in candidates:
        totals.add(
            c.ts_ms, c.dims, c.cost_pico, c.input_tokens, c.output_tokens, c.cached_input_tokens
        )
    return totals

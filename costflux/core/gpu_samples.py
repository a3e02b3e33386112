"""Judge one partition of GPU samples and pre-aggregate their GPU time by window.

The GPU twin of ``costflux.core.ingest``: the same checks (future, unpriced, late against the
partition's own clock) and the same pre-aggregation into window rows, so the same ingest
loop and atomic apply carry both. GPU rows (``costflux.core.rows.GpuSums``) sum milliseconds
(GPU, busy and idle time); their key carries the prices, and cost is computed exactly when
read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from costflux.core.aggregate import FlushRows, by_window
from costflux.core.events import Rejected, decode_gpu_message
from costflux.core.gpu import (
    busy_and_idle_ms,
    interval_ms_of,
    pieces,
    rates_key,
    slice_rates,
)
from costflux.core.ingest import IngestRules, Judged, PartitionClock
from costflux.core.judging import Decoder, decoded, reject, with_context
from costflux.core.pricing import PriceBook
from costflux.core.rows import GpuDims
from costflux.schemas._types import epoch_ms
from costflux.schemas.deadletter import DeadLetterReason
from costflux.schemas.gpu import GpuSample

__all__ = [
    "PROCESS_LABEL",
    "GpuAggregate",
    "GpuCandidate",
    "judge_gpu",
    "model_of",
]

#: The label the sidecar lists a GPU's compute process ids in ("pids": "400,812").
PROCESS_LABEL = "pids"


class GpuCandidate(NamedTuple):
    """A valid, priced, on-time GPU sample, not yet checked for duplicates."""

    event_id: str
    position: str
    ts_ms: int  # the end of its interval
    dims: GpuDims
    interval_ms: int
    utilization_pct: float | None  # as measured; None for a MIG instance
    busy_pct: float  # what its time is judged busy and idle by (see busy_pct_of)
    gpu_uuid: str


def model_of(labels: dict[str, str]) -> str:
    """The model a GPU serves, from its labels: ``model``, else ``deployment``.

    It must equal the ``model`` of the usage events it serves (vLLM's served model name);
    that is what joins GPU cost with requests and tokens.
    """
    return labels.get("model") or labels.get("deployment", "")


def busy_pct_of(utilization_pct: float | None, labels: dict[str, str]) -> float:
    """The utilization a sample's time is judged by.

    NVML measures no utilization for a MIG instance, so there the measure is occupancy: an
    instance with a compute process on it is busy, one without is idle (its cost is waste).
    """
    if utilization_pct is not None:
        return utilization_pct
    return 100.0 if labels.get(PROCESS_LABEL) else 0.0


def judge_gpu(
    messages: Iterable[tuple[int, bytes | None]],
    clock: PartitionClock,
    prices: PriceBook,
    rules: IngestRules,
    now_wall_ms: int,
    decode: Decoder[GpuSample] = decode_gpu_message,
) -> Judged[GpuCandidate]:
    """Decode, validate, price and time-check GPU samples given as (offset, value), in order.

    A sample is late when the window its interval *starts* in has closed: every window it
    touches must still be open to take its GPU time. A message ``decode`` raises on is a dead
    letter, as in usage ingest (``costflux.core.judging``).
    """
    judged: Judged[GpuCandidate] = Judged()
    candidates = judged.candidates
    # gpu_type -> (its rates' row-key field, and the times [start, end) they hold for)
    spans: dict[str, tuple[str, int, int] | None] = {}
    finest_ms = rules.finest_window_ms
    lateness_ms = rules.allowed_lateness_ms
    future_limit = now_wall_ms + rules.max_future_ms
    watermark = clock.watermark_ms(lateness_ms)
    for offset, value, entries, batched in decoded(messages, decode, judged.rejected):
        for index, entry in enumerate(entries):
            if isinstance(entry, Rejected):
                judged.rejected.append((offset, entry))
                continue
            ts_ms = epoch_ms(entry.ts)
            interval_ms = interval_ms_of(entry.interval_s)
            start_ms = ts_ms - interval_ms
            span = spans.get(entry.gpu_type)
            if span is None or not span[1] <= start_ms < span[2]:
                span = spans[entry.gpu_type] = _rates_span(prices, entry.gpu_type, start_ms)
            if ts_ms > future_limit:
                verdict = reject(
                    DeadLetterReason.FUTURE_TIMESTAMP,
                    f"ts is more than {rules.max_future_ms // 1000}s ahead of the clock; "
                    "check the node's clock",
                )
            elif span is None:
                verdict = reject(
                    DeadLetterReason.UNKNOWN_GPU_TYPE,
                    f"gpu_type {entry.gpu_type!r} has no price at {entry.ts.isoformat()}; add it "
                    "to gpu_pricing in pricing.yaml or map the GPU name with --gpu-type",
                )
            elif watermark is not None and start_ms - start_ms % finest_ms + finest_ms <= watermark:
                verdict = reject(
                    DeadLetterReason.LATE,
                    f"interval starts more than the allowed lateness ({lateness_ms} ms) behind "
                    "its partition's newest sample; its window has closed",
                )
            else:
                if clock.max_ts_ms is None or ts_ms > clock.max_ts_ms:
                    clock.max_ts_ms = ts_ms
                    watermark = ts_ms - lateness_ms
                labels, mig = entry.labels, entry.mig
                rates = span[0] if mig is None else slice_rates(
                    span[0], mig.slices, mig.slices_total
                )
                candidates.append(_new_candidate(GpuCandidate, (
                    entry.event_id, f"{offset}:{index}" if batched else str(offset), ts_ms,
                    (entry.node, entry.gpu_type, entry.pricing_tier, labels.get("namespace", ""),
                     model_of(labels), labels.get("team", ""), rates),
                    interval_ms, entry.utilization_pct,
                    busy_pct_of(entry.utilization_pct, labels), entry.gpu_uuid,
                )))
                continue
            judged.rejected.append((offset, with_context(
                verdict, value, index if batched else None, entry, _as_written)))
    return judged


# tuple.__new__ builds the NamedTuple in C, without a Python call per sample (as in ingest).
_new_candidate = tuple.__new__


def _rates_span(prices: PriceBook, gpu_type: str, ts_ms: int) -> tuple[str, int, int] | None:
    span = prices.gpu_price_span(gpu_type, ts_ms)
    return None if span is None else (rates_key(span[0]), span[1], span[2])


def _as_written(sample: GpuSample) -> bytes:
    return sample.model_dump_json().encode()


class GpuAggregate:
    """Sums one flush of GPU samples into GPU rows by finest window (intervals cut at edges)."""

    __slots__ = ("_finest_ms", "_idle_threshold_pct", "_sums")

    def __init__(self, finest_window_s: int, idle_threshold_pct: float) -> None:
        self._finest_ms = finest_window_s * 1000
        self._idle_threshold_pct = idle_threshold_pct
        self._sums: dict[tuple[int, GpuDims], list[int]] = {}

    def add_all(self, candidates: Iterable[GpuCandidate]) -> None:
        for candidate in candidates:
            for start, gpu_ms in pieces(candidate.ts_ms, candidate.interval_ms, self._finest_ms):
                busy_ms, idle_ms = busy_and_idle_ms(
                    gpu_ms, candidate.busy_pct, self._idle_threshold_pct
                )
                sums = self._sums.setdefault((start, candidate.dims), [0, 0, 0])
                sums[0] += gpu_ms
                sums[1] += busy_ms
                sums[2] += idle_ms

    def rows(self, window_sizes_s: Iterable[int]) -> FlushRows:
        """The flush's GPU rows in every window size (sums in ``GpuSums`` field order)."""
        return FlushRows(gpu=by_window(self._sums, window_sizes_s))

"""Two-phase aggregation: per-partition pre-aggregates, and their idempotent combination.

Phase one (the ingest hot path) sums a flush of one source partition into rows keyed by
window and dimensions. Phase two (a Faust agent) folds those partials into window state that
records, per source partition, the last offset it has applied: a partial replayed after a
crash carries offsets already applied and is skipped, so totals never double count.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "DIMENSIONS",
    "SUM_FIELDS",
    "PartialKey",
    "PartitionAggregate",
    "apply_partial",
    "merge_rows",
    "partials_of",
]

#: The dimensions every cost row is keyed by: the model, four labels, the deployment (the
#: event's own field, else its ``deployment`` label) and the ``cluster`` label. Rows written
#: before deployment and cluster existed have the first five only (see decode_dimensions).
DIMENSIONS = ("model", "team", "project", "app", "namespace", "deployment", "cluster")
#: The integer sums every row carries, in this order. Rows written before a field was added
#: are shorter: a reader takes a missing sum as 0.
SUM_FIELDS = (
    "cost_pico", "input_tokens", "output_tokens", "cached_input_tokens", "requests", "gpu_ms",
    "cache_saving_pico",
)

DimKey = tuple[str, str, str, str, str, str, str]
Rows = dict[str, list[int]]


@dataclass(frozen=True, slots=True, order=True)
class PartialKey:
    """Addresses one shard of one window: the Kafka key of partials and of window state."""

    size_s: int
    start_ms: int
    bucket: int

    def encode(self) -> bytes:
        return f"{self.size_s}:{self.start_ms}:{self.bucket}".encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> PartialKey:
        text = raw.decode() if isinstance(raw, bytes) else raw
        size, start, bucket = text.split(":")
        return cls(int(size), int(start), int(bucket))

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.size_s * 1000


def encode_dimensions(dims: DimKey) -> str:
    """Row key: the dimension values as a JSON array (any label text is safe in it)."""
    return orjson.dumps(dims).decode()


def decode_dimensions(row_key: str) -> DimKey:
    """The dimensions of a row key; a key written before deployment and cluster existed (five
    values) reads them as "", so a rolling upgrade keeps old rows readable."""
    values = orjson.loads(row_key)
    if len(values) < len(DIMENSIONS):
        values += [""] * (len(DIMENSIONS) - len(values))
    model, team, project, app, namespace, deployment, cluster = values
    return (model, team, project, app, namespace, deployment, cluster)


def bucket_of(row_key: str, buckets: int) -> int:
    """Stable shard of a row (Python's hash() changes between processes)."""
    return zlib.crc32(row_key.encode()) % buckets


class PartitionAggregate:
    """Sums one flush of one source partition, by finest window and dimensions."""

    __slots__ = ("_finest_ms", "_sums")

    def __init__(self, finest_window_s: int) -> None:
        self._finest_ms = finest_window_s * 1000
        self._sums: dict[tuple[int, DimKey], list[int]] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def add_all(self, rows: Iterable[Sequence[Any]]) -> None:
        """Add rows shaped like ``ingest.Candidate``: (_, _, ts_ms, dims, cost, in, out, cached,
        gpu_ms, cache_saving).

        One loop over all rows with its lookups hoisted: this runs once per counted event.
        """
        finest_ms = self._finest_ms
        sums_by_key = self._sums
        for (_, _, ts_ms, dims, cost_pico, input_tokens, output_tokens, cached, gpu_ms,
             saving) in rows:
            key = (ts_ms - ts_ms % finest_ms, dims)
            sums = sums_by_key.get(key)
            if sums is None:
                sums_by_key[key] = [
                    cost_pico, input_tokens, output_tokens, cached, 1, gpu_ms, saving
                ]
            else:
                sums[0] += cost_pico
                sums[1] += input_tokens
                sums[2] += output_tokens
                sums[3] += cached
                sums[4] += 1
                sums[5] += gpu_ms
                sums[6] += saving

    def partials(self, window_sizes_s: Iterable[int], buckets: int) -> dict[PartialKey, Rows]:
        """Rows per window shard, for every window size (larger ones summed from the finest)."""
        return partials_of(self._sums, encode_dimensions, window_sizes_s, buckets)


def partials_of(
    sums_by_key: Mapping[tuple[int, Any], list[int]],
    encode: Callable[[Any], str],
    window_sizes_s: Iterable[int],
    buckets: int,
) -> dict[PartialKey, Rows]:
    """Partial rows per window shard from sums keyed by (finest window start, dimensions).

    Larger windows are summed from the finest; each row goes to the shard its key hashes to.
    """
    encoded: dict[Any, tuple[str, int]] = {}
    out: dict[PartialKey, Rows] = {}
    sizes = sorted(window_sizes_s)
    for (finest_start, dims), sums in sums_by_key.items():
        if dims not in encoded:
            row_key = encode(dims)
            encoded[dims] = (row_key, bucket_of(row_key, buckets))
        row_key, bucket = encoded[dims]
        for size_s in sizes:
            size_ms = size_s * 1000
            key = PartialKey(size_s, finest_start - finest_start % size_ms, bucket)
            rows = out.setdefault(key, {})
            merge_rows(rows, {row_key: sums})
    return out


def merge_rows(into: Rows, rows: Mapping[str, list[int]]) -> None:
    """Add ``rows`` into ``into`` field by field (copies, never aliases).

    A shorter row (written before a field was added) reads as zeros in the fields it lacks.
    """
    for row_key, sums in rows.items():
        current = into.get(row_key)
        if current is None:
            into[row_key] = list(sums)
        else:
            if len(current) < len(sums):
                current.extend([0] * (len(sums) - len(current)))
            for index, value in enumerate(sums):
                current[index] += value


def new_window_state() -> dict[str, Any]:
    """Empty state of one window shard: applied offsets per source, and its rows."""
    return {"applied": {}, "rows": {}}


def apply_partial(state: dict[str, Any] | None, partial: Mapping[str, Any]) -> tuple[
    dict[str, Any], bool
]:
    """Fold a partial into window state; return (state, whether it was new).

    Idempotent: a partial whose last offset is already applied for its source partition is
    a replay and leaves the state unchanged. Ingest re-cuts a replayed flush at the same
    offsets (see ``streams.ingest``), so partials never straddle what was applied.
    """
    state = new_window_state() if state is None else state
    source = partial["src"]
    applied = state["applied"].get(source, -1)
    if partial["last"] <= applied:
        return state, False
    merge_rows(state["rows"], partial["rows"])
    state["applied"][source] = partial["last"]
    return state, True

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
    "CACHE_SAVING",
    "DIMENSIONS",
    "GPU_MS",
    "OVERFLOW",
    "SEMANTIC_HITS",
    "SEMANTIC_SAVING",
    "SUM_FIELDS",
    "PartialKey",
    "PartitionAggregate",
    "apply_partial",
    "merge_rows",
    "overflow_dimensions",
    "partials_of",
    "sum_at",
]

#: The dimensions every cost row is keyed by: the model, four labels, the deployment (the
#: event's own field, else its ``deployment`` label) and the ``cluster`` label. Rows written
#: before deployment and cluster existed have the first five only (see decode_dimensions).
DIMENSIONS = ("model", "team", "project", "app", "namespace", "deployment", "cluster")
#: The integer sums every row carries, in this order. Rows written before a field was added
#: are shorter: a reader takes a missing sum as 0 (``sum_at``). ``cache_saving_pico`` is what
#: prompt caching saved; the last two are the semantic cache's hits (requests answered without
#: calling the model, counted in ``requests`` but not in cost or tokens) and the cost they
#: avoided, priced at their event time.
SUM_FIELDS = (
    "cost_pico", "input_tokens", "output_tokens", "cached_input_tokens", "requests", "gpu_ms",
    "cache_saving_pico", "semantic_cache_hits", "semantic_saving_pico",
)
GPU_MS, CACHE_SAVING, SEMANTIC_HITS, SEMANTIC_SAVING = 5, 6, 7, 8  # indexes into SUM_FIELDS

DimKey = tuple[str, str, str, str, str, str, str]
#: Every label dimension of the row a full window shard folds new label combinations into.
OVERFLOW = "__overflow__"
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


def sum_at(sums: Sequence[int], index: int) -> int:
    """The sum at ``index`` of SUM_FIELDS; 0 for a row written before that field existed."""
    return sums[index] if len(sums) > index else 0


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
        gpu_ms, cache_saving, semantic_saving) where semantic_saving is None for a request the
        model served and the avoided cost for a semantic cache hit.

        One loop over all rows with its lookups hoisted: this runs once per counted event, and
        a served request pays one ``is None`` test for the semantic cache.
        """
        finest_ms = self._finest_ms
        sums_by_key = self._sums
        for (_, _, ts_ms, dims, cost_pico, input_tokens, output_tokens, cached, gpu_ms,
             saving, semantic_saving) in rows:
            key = (ts_ms - ts_ms % finest_ms, dims)
            sums = sums_by_key.get(key)
            if sums is None:
                sums = sums_by_key[key] = [
                    cost_pico, input_tokens, output_tokens, cached, 1, gpu_ms, saving, 0, 0
                ]
            else:
                sums[0] += cost_pico
                sums[1] += input_tokens
                sums[2] += output_tokens
                sums[3] += cached
                sums[4] += 1
                sums[5] += gpu_ms
                sums[6] += saving
            if semantic_saving is not None:  # a hit: its cost and tokens above are zeros
                sums[7] += 1
                sums[8] += semantic_saving

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


def apply_partial(
    state: dict[str, Any] | None,
    partial: Mapping[str, Any],
    max_bytes: int | None = None,
    bucket: int = 0,
) -> tuple[dict[str, Any], bool]:
    """Fold a partial into window state; return (state, whether it was new).

    Idempotent: a partial whose last offset is already applied for its source partition is
    a replay and leaves the state unchanged. Ingest re-cuts a replayed flush at the same
    offsets (see ``streams.ingest``), so partials never straddle what was applied.

    A shard whose rows would pass ``max_bytes`` (as estimated by ``row_bytes``) folds further
    new label combinations into one overflow row per model (``overflow_dimensions``), and
    ``state["overflowed"]`` counts them: the money stays exact, only their label detail is
    lost. Without the cap a
    producer inventing label values (100,000 teams in an hour) grew one shard's state past
    the broker's 1 MB record limit, and the worker died writing it to its changelog, again
    after every restart.
    """
    state = new_window_state() if state is None else state
    source = partial["src"]
    applied = state["applied"].get(source, -1)
    if partial["last"] <= applied:
        return state, False
    rows: Mapping[str, list[int]] = partial["rows"]
    if max_bytes is not None:
        rows = _within_budget(state, rows, max_bytes, bucket)
    merge_rows(state["rows"], rows)
    state["applied"][source] = partial["last"]
    return state, True


def row_bytes(row_key: str) -> int:
    """A row's share of its shard's encoded state: the key, and its sums at a generous
    width (a pico-dollar sum reaches 19 digits, most are far shorter)."""
    return len(row_key.encode()) + 12 * len(SUM_FIELDS)


def overflow_dimensions(model: str, bucket: int) -> DimKey:
    """The row a full shard folds ``model``'s new label combinations into: every label
    ``OVERFLOW``, and the cluster names the shard, because a row key must belong to one
    shard of its window (the serving view keeps one row per key and window)."""
    return (model, OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW, f"{OVERFLOW}{bucket}")


def _within_budget(
    state: dict[str, Any], incoming: Mapping[str, list[int]], max_bytes: int, bucket: int
) -> Mapping[str, list[int]]:
    """``incoming`` with the new usage rows that would pass the budget re-keyed to their
    model's overflow row. GPU rows (a few per node) always keep their key. Keeps the state's
    running size (``state["bytes"]``) and count of folded rows (``state["overflowed"]``)."""
    held: Rows = state["rows"]
    size = state.get("bytes")
    if size is None:  # state written before the budget existed
        size = sum(row_bytes(key) for key in held)
    out: Rows = {}
    folded = 0
    for row_key, sums in incoming.items():
        if row_key in held or row_key in out:
            merge_rows(out, {row_key: sums})
            continue
        cost = row_bytes(row_key)
        if size + cost > max_bytes and row_key.startswith("["):
            row_key = encode_dimensions(overflow_dimensions(decode_dimensions(row_key)[0], bucket))
            folded += 1
            if row_key in held or row_key in out:
                merge_rows(out, {row_key: sums})
                continue
            cost = row_bytes(row_key)
        out[row_key] = list(sums)
        size += cost
    state["bytes"] = size
    if folded:
        state["overflowed"] = state.get("overflowed", 0) + folded
    return out

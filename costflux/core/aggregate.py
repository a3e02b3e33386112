"""Pre-aggregation of one flush: what one source partition's offset range adds to each window.

The ingest hot path sums the events of a flush by finest window and dimensions (one loop,
lists of integers, no per-event objects), then rolls the finest windows up into every
configured size. The store adds a flush's rows to its windows in one atomic step together
with the partition's next offset (``costflux.streams.cost_store``), so a flush counts once whoever
applies it and however often it is replayed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from costflux.core.rows import DimKey, GpuDims, UsageSums

__all__ = ["FlushRows", "PartitionAggregate", "Window", "by_window"]

#: A window: (size in seconds, start in epoch milliseconds).
Window = tuple[int, int]

_Key = TypeVar("_Key", bound=Hashable)
#: Sums every usage row has (``UsageSums`` up to ``semantic_saving_pico``); the whole bill's
#: follow, only in rows with billed requests.
_PLAIN_SUMS = UsageSums._fields.index("contract_discount_pico")


@dataclass(slots=True)
class FlushRows:
    """What one flush adds to each window it touches: usage rows and GPU rows, apart, as
    sums in ``UsageSums`` / ``GpuSums`` field order."""

    usage: dict[Window, dict[DimKey, list[int]]] = field(default_factory=dict)
    gpu: dict[Window, dict[GpuDims, list[int]]] = field(default_factory=dict)
    #: Usage per principal and UTC day (costflux.core.spend): (label, day start) -> label
    #: value -> sums in ``UsageSums`` order.
    principals: dict[tuple[str, int], dict[str, list[int]]] = field(default_factory=dict)
    #: Enforced budgets' counters: (counter id, period start, seconds to keep) -> the value a
    #: "*" budget counts ("" for one budget of the whole scope) -> [cost in pico-dollars].
    budget_spend: dict[tuple[str, int, int], dict[str, list[int]]] = field(
        default_factory=dict)

    def finest_usage(self, finest_s: int) -> Iterable[tuple[DimKey, list[int]]]:
        """Every usage row of the finest windows: each counted event is in exactly one."""
        for (size_s, _start), rows in self.usage.items():
            if size_s == finest_s:
                yield from rows.items()


def by_window(
    sums_by_finest: Mapping[tuple[int, _Key], list[int]], window_sizes_s: Iterable[int]
) -> dict[Window, dict[_Key, list[int]]]:
    """Rows per window of every size, from sums keyed by (finest window start, row key).

    Larger windows are summed from the finest, so every size holds every event exactly once.
    """
    out: dict[Window, dict[_Key, list[int]]] = {}
    for size_s in sorted(window_sizes_s):
        size_ms = size_s * 1000
        for (finest_start, key), sums in sums_by_finest.items():
            rows = out.setdefault((size_s, finest_start - finest_start % size_ms), {})
            current = rows.get(key)
            if current is None:
                rows[key] = list(sums)
            else:
                if len(current) < len(sums):  # rows with a whole bill's sums are longer
                    current.extend([0] * (len(sums) - len(current)))
                for index, value in enumerate(sums):
                    current[index] += value
    return out


class PartitionAggregate:
    """Sums one flush of usage events of one source partition, by finest window and
    dimensions."""

    __slots__ = ("_finest_ms", "_sums")

    def __init__(self, finest_window_s: int) -> None:
        self._finest_ms = finest_window_s * 1000
        self._sums: dict[tuple[int, DimKey], list[int]] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def add_all(self, rows: Iterable[Sequence[Any]]) -> None:
        """Add rows shaped like ``ingest.Candidate``: (_, _, ts_ms, dims, cost, in, out, cached,
        gpu_ms, cache_saving, semantic_saving, billed, principal) where semantic_saving is None
        for a request the model served and the avoided cost for a semantic cache hit, and
        billed None unless the request has a whole bill's sums. The sums are in ``UsageSums``
        field order.

        One loop over all rows with its lookups hoisted: this runs once per counted event, and
        a served request pays one ``is None`` test for the semantic cache.
        """
        finest_ms = self._finest_ms
        sums_by_key = self._sums
        for (_, _, ts_ms, dims, cost_pico, input_tokens, output_tokens, cached, gpu_ms,
             saving, semantic_saving, billed, _principal) in rows:
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
            if billed is not None:  # the whole bill's sums (costflux.core.bill.BILL_FIELDS)
                if len(sums) < _PLAIN_SUMS + len(billed):
                    sums.extend([0] * (_PLAIN_SUMS + len(billed) - len(sums)))
                for index, value in enumerate(billed, _PLAIN_SUMS):
                    sums[index] += value

    def sums_by_start(self) -> dict[tuple[int, DimKey], list[int]]:
        """The sums, keyed by (finest window start, dimensions)."""
        return self._sums

    def rows(self, window_sizes_s: Iterable[int]) -> FlushRows:
        """The flush's usage rows in every window size."""
        return FlushRows(usage=by_window(self._sums, window_sizes_s))

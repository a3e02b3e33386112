"""Allocation queries: which windows cover a time range, and cost grouped by dimensions.

The answer has the Kubecost/OpenCost ``/model/allocation`` shape, with token fields added.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from costflux.core.aggregate import DIMENSIONS, decode_dimensions, merge_rows
from costflux.core.money import pico_to_dollars, pico_to_exact_string

__all__ = ["AllocationQueryError", "TimeRange", "allocate", "cover", "parse_aggregate",
           "parse_window"]

_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
UNALLOCATED = "__unallocated__"


class AllocationQueryError(ValueError):
    """The query's window or aggregate parameter is invalid; the message says what works."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open event-time range [start_ms, end_ms), aligned to the finest window."""

    start_ms: int
    end_ms: int


def parse_window(text: str, now_ms: int, finest_s: int) -> TimeRange:
    """'24h', '7d', '90m', '2w' (ending at ``now_ms``), or 'start,end' in RFC 3339."""
    finest_ms = finest_s * 1000
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        end = _ceil(now_ms, finest_ms)
        return TimeRange(end - int(match.group(1)) * _UNIT_MS[match.group(2)], end)
    parts = text.split(",")
    if len(parts) != 2:
        raise AllocationQueryError(
            "window must be a duration such as 24h or 7d, or 'start,end' in RFC 3339"
        )
    start, end = (_parse_instant(p) for p in parts)
    if end <= start:
        raise AllocationQueryError("window end must be after its start")
    return TimeRange(start - start % finest_ms, _ceil(end, finest_ms))


def _ceil(ms: int, step: int) -> int:
    return -(-ms // step) * step


def _parse_instant(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AllocationQueryError(
            f"{text!r} is not RFC 3339 (e.g. 2024-05-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def cover(span: TimeRange, sizes_s: Iterable[int]) -> list[tuple[int, int]]:
    """Fewest windows (size_s, start_ms) that exactly tile ``span``, largest sizes first.

    Every event lies in exactly one window of each size, so summing the tiles is exact.
    """
    sizes_ms = sorted((s * 1000 for s in sizes_s), reverse=True)
    tiles: list[tuple[int, int]] = []
    position = span.start_ms
    while position < span.end_ms:
        for size_ms in sizes_ms:
            if position % size_ms == 0 and position + size_ms <= span.end_ms:
                tiles.append((size_ms // 1000, position))
                position += size_ms
                break
        else:
            raise AllocationQueryError("window is not aligned to the finest window size")
    return tiles


def parse_aggregate(text: str) -> list[int]:
    """'model', 'namespace', 'label:team', comma separated -> indexes into DIMENSIONS."""
    indexes = []
    for part in (p.strip() for p in text.split(",")):
        name = part.removeprefix("label:")
        if name not in DIMENSIONS:
            valid = ", ".join(["model", "namespace", "label:team", "label:project", "label:app"])
            raise AllocationQueryError(f"cannot aggregate by {part!r}; use one of: {valid}")
        indexes.append(DIMENSIONS.index(name))
    return indexes


def allocate(
    windows_rows: Iterable[Mapping[str, list[int]]],
    group_by: list[int],
    span: TimeRange,
) -> dict[str, dict[str, object]]:
    """Group the rows of every covering window by the chosen dimensions, Kubecost-shaped."""
    groups: dict[str, dict[str, list[int]]] = {}
    for rows in windows_rows:
        for row_key, sums in rows.items():
            dims = decode_dimensions(row_key)
            name = "/".join(dims[i] or UNALLOCATED for i in group_by)
            merge_rows(groups.setdefault(name, {}), {"": sums})
    window = {"start": _iso(span.start_ms), "end": _iso(span.end_ms)}
    return {name: _allocation(name, sums[""], window) for name, sums in sorted(groups.items())}


def _allocation(name: str, sums: list[int], window: dict[str, str]) -> dict[str, object]:
    cost_pico, input_tokens, output_tokens, cached, requests = sums
    tokens = input_tokens + output_tokens
    cost = pico_to_dollars(cost_pico)
    return {
        "name": name,
        "window": window,
        "start": window["start"],
        "end": window["end"],
        "totalCost": cost,
        "tokenCost": cost,
        "totalCostExact": pico_to_exact_string(cost_pico),
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "cachedInputTokens": cached,
        "requests": requests,
        "costPerRequest": cost / requests if requests else 0.0,
        "costPerToken": cost / tokens if tokens else 0.0,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Event-time tumbling windows and watermarks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "PartitionMark",
    "duration_ms",
    "global_watermark",
    "window_start",
]


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def duration_ms(text: str) -> int | None:
    """'90s', '30m', '1h', '7d', '2w' (or '0') in milliseconds; None if it is not one.

    >>> duration_ms("30m"), duration_ms("0"), duration_ms("1.5h")
    (1800000, 0, None)
    """
    text = text.strip()
    if text == "0":
        return 0
    match = _DURATION.match(text)
    return int(match.group(1)) * _UNIT_MS[match.group(2)] if match else None


def window_start(ts_ms: int, size_ms: int) -> int:
    """Start of the tumbling window of ``size_ms`` that holds ``ts_ms`` (epoch-aligned)."""
    return ts_ms - ts_ms % size_ms


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """What one source partition has told us: its watermark and when it last had data."""

    watermark_ms: int | None
    last_data_wall_ms: int


def global_watermark(
    marks: Mapping[str, PartitionMark], now_wall_ms: int, idle_after_ms: int
) -> int | None:
    """The event time before which every active partition is complete.

    The minimum over partitions that had data recently: during catch-up a lagging partition
    holds windows open instead of having its events declared late. A partition silent for
    ``idle_after_ms`` of wall time stops holding them (it may never speak again). If every
    partition is idle, everything any of them reported is complete.
    """
    active = [
        m.watermark_ms
        for m in marks.values()
        if now_wall_ms - m.last_data_wall_ms < idle_after_ms
    ]
    if any(w is None for w in active):
        return None  # an active partition has not reported an event time yet
    if active:
        return min(w for w in active if w is not None)
    known = [m.watermark_ms for m in marks.values() if m.watermark_ms is not None]
    return max(known) if known else None

"""The pipeline's watermark: the event time before which every active source partition is
complete in the cost store.

Ingest stores each partition's clock in the same atomic step as the rows it covers, so a
window before this watermark holds everything every active partition will ever add to it
(later events of those partitions are dead-lettered as late). Alert evaluation and the
unit-cost gauges read only such windows. Every worker computes the same value from the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from costflux.agents.serving import ServingView
from costflux.core.windows import global_watermark
from costflux.streams.metrics import CostMetrics

__all__ = ["PipelineWatermark"]


class PipelineWatermark:
    """Reads the partitions' marks from the store and keeps the newest watermark (it never
    goes back: a partition that wakes up after being idle delays later windows, not earlier
    ones)."""

    def __init__(self, view: ServingView, metrics: CostMetrics, lateness_ms: int,
                 idle_after_ms: int,
                 wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self._view = view
        self._metrics = metrics
        self._lateness_ms = lateness_ms
        self._idle_after_ms = idle_after_ms
        self._now_ms = wall_clock_ms
        self.current_ms: int | None = None

    async def advance(self) -> None:
        marks = await self._view.partition_marks(self._lateness_ms)
        watermark = global_watermark(marks, self._now_ms(), self._idle_after_ms)
        if watermark is not None and (self.current_ms is None or watermark > self.current_ms):
            self.current_ms = watermark
            self._metrics.watermark.set(watermark / 1000)

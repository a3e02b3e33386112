"""Cost per request and per token by model, as gauges, over the last hour the watermark
closed: token cost plus all of the model's GPU cost, idle included (the seed's GPU time x
price / requests), read from the serving view, where every worker's flushes meet."""

from __future__ import annotations

from collections.abc import Callable

from costflux.agents.serving import ServingView
from costflux.core.allocation import AllocationOptions, TimeRange, allocate, cover
from costflux.core.spike import HOUR_MS
from costflux.streams.metrics import CostMetrics

__all__ = ["UnitCosts"]


class UnitCosts:
    def __init__(self, view: ServingView, metrics: CostMetrics,
                 window_sizes_s: tuple[int, ...], watermark: Callable[[], int | None]) -> None:
        self._view = view
        self._metrics = metrics
        self._window_sizes_s = window_sizes_s
        self._watermark = watermark

    async def publish(self) -> None:
        watermark = self._watermark()
        if watermark is None:
            return
        end = watermark - watermark % HOUR_MS
        span = TimeRange(end - HOUR_MS, end)
        rows = await self._view.read_windows(cover(span, self._window_sizes_s))
        by_model = allocate(rows, [0], span, AllocationOptions(share_idle=True))
        self._metrics.set_unit_costs(
            {model: (float(row["costPerRequest"]), float(row["costPerToken"]))  # type: ignore[arg-type]
             for model, row in by_model.items() if row["requests"]}
        )

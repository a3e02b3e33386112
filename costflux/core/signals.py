"""The values alert rules watch, computed exactly from window rows at one event time.

Every signal is a pure function of the closed windows before an evaluation time ``t``: the
last hour [t-1h, t), the last day [t-24h, t), or the clock hours before ``t`` (cost spike).
Windows before the watermark no longer change, so evaluating the same ``t`` twice, at replay
speed or live, gives the same values. Cost here is fully loaded: a model's idle GPU time is
charged to the teams that used the model (the seed's GPU time x price / requests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction

from costflux.core.allocation import AllocationOptions, TimeRange, cover, group_costs
from costflux.core.gpu import UNITS_PER_PICO
from costflux.core.gpu_report import gpu_sums
from costflux.core.money import PICO_PER_DOLLAR
from costflux.core.rows import DIMENSIONS, GPU_DIMENSIONS, WindowRows
from costflux.core.spike import BASELINE_HOURS, HOUR_MS, spike_ratio

__all__ = ["DAY_MS", "SPANS", "UNITS_PER_DOLLAR", "LabelValues", "Rows", "Tile", "Tiles",
           "fully_loaded", "hourly_signal", "span_tiles", "spike_hours", "window_signal"]

Tile = tuple[int, int]  # (window size in s, window start in ms), as the serving view keys it
Rows = WindowRows
Tiles = Mapping[Tile, Rows]
LabelValues = tuple[str, ...]  # a group's values of the rule's group_by, in order

DAY_MS = 24 * HOUR_MS
UNITS_PER_DOLLAR = UNITS_PER_PICO * PICO_PER_DOLLAR

#: Signals over a sliding span ending at t: signal -> span length.
SPANS = {
    "cost_per_request": HOUR_MS,
    "gpu_utilization": HOUR_MS,
    "idle_cost_1h": HOUR_MS,
    "gpu_idle_waste": HOUR_MS,
    "daily_cost": DAY_MS,
}


def fully_loaded(options: AllocationOptions) -> AllocationOptions:
    """The same GPU-cost split, with idle time charged to the model's users."""
    return AllocationOptions(share_idle=True, weight=options.weight)


def span_tiles(start_ms: int, end_ms: int, sizes_s: Sequence[int]) -> list[Tile]:
    return cover(TimeRange(start_ms, end_ms), sizes_s)


def window_signal(
    signal: str, group_by: Sequence[str], rows: Iterable[Rows], options: AllocationOptions
) -> dict[LabelValues, Fraction]:
    """Value of a sliding-span signal per group, from the rows of the windows covering it."""
    if signal in ("cost_per_request", "daily_cost"):
        costs = group_costs(rows, [DIMENSIONS.index(g) for g in group_by],
                            fully_loaded(options))
        if signal == "daily_cost":
            return {key: Fraction(c.total_units, UNITS_PER_DOLLAR) for key, c in costs.items()}
        return {key: Fraction(c.total_units, UNITS_PER_DOLLAR * c.requests)
                for key, c in costs.items() if c.requests}
    gpu = gpu_sums(rows, [GPU_DIMENSIONS.index(g) for g in group_by])
    if signal == "idle_cost_1h":
        return {key: Fraction(sums[4], UNITS_PER_DOLLAR) for key, sums in gpu.items()}
    # utilization: % of GPU time busy; GPUIdleWaste only counts GPUs that cost money
    return {
        key: Fraction(100 * sums[1], sums[0]) for key, sums in gpu.items()
        if sums[0] and (signal == "gpu_utilization" or sums[3] > 0)
    }


def spike_hours(t_ms: int) -> list[int]:
    """Starts of the clock hours a spike evaluation at the hour ``t_ms`` reads (oldest first)."""
    return [t_ms - back * HOUR_MS for back in range(BASELINE_HOURS + 1, 0, -1)]


def hourly_signal(
    group_by: Sequence[str],
    hour_rows: Callable[[int], Iterable[Rows]],
    t_ms: int,
    min_history_ms: int,
    options: AllocationOptions,
) -> dict[LabelValues, Fraction]:
    """Cost spike per group at the clock hour ``t_ms``: the hour before it against the 24 before.

    A group's history starts at its first hour with cost among those read, so a new group
    stays silent until it has ``min_history_ms`` of it (cold start).
    """
    indexes = [DIMENSIONS.index(g) for g in group_by]
    hourly: dict[LabelValues, dict[int, int]] = {}
    for hour in spike_hours(t_ms):
        for key, cost in group_costs(hour_rows(hour), indexes, fully_loaded(options)).items():
            if cost.total_units:
                hourly.setdefault(key, {})[hour] = cost.total_units
    ratios = {}
    for key, by_hour in hourly.items():
        ratio = spike_ratio(by_hour, t_ms - HOUR_MS, min(by_hour), min_history_ms)
        if ratio is not None:
            ratios[key] = ratio
    return ratios


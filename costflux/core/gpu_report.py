"""GPU cost by node, GPU type, pricing tier, namespace, model or team, with tier what-ifs.

``costAtTier`` prices the same GPU-hours at every tier: what the fleet would have cost all
on-demand, all spot or all reserved (the input for savings advice).

The hours, one meaning each: ``gpuHours`` is the time the GPUs were sampled; ``utilizedHours``
is that time weighted by utilization (an hour at 40 % is 0.4); ``idleHours`` is the time of
samples under the idle threshold (``COSTFLUX_GPU_IDLE_THRESHOLD_PCT``), whole. Utilized plus
idle is therefore not the total: an hour at 50 % is 0.5 utilized and 0 idle. ``busyHours`` is
the old name of ``utilizedHours``, kept for one release.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from costflux.core.allocation import UNALLOCATED, AllocationQueryError, TimeRange, iso_window
from costflux.core.gpu import cost_units, price_of_rates, units_to_dollars
from costflux.core.pricing import TIERS
from costflux.core.rows import GPU_DIMENSIONS, WindowRows

__all__ = ["gpu_report", "gpu_sums", "parse_gpu_aggregate"]

_GROUPABLE = GPU_DIMENSIONS[:-1]  # every dimension but the rates
_MS_PER_HOUR = Decimal(3_600_000)


def parse_gpu_aggregate(text: str) -> list[int]:
    """'node', 'gpu_type', 'pricing_tier', 'namespace', 'model', 'label:team', comma separated."""
    indexes = []
    for part in (p.strip() for p in text.split(",")):
        name = part.removeprefix("label:")
        if name not in _GROUPABLE:
            raise AllocationQueryError(
                f"cannot aggregate GPU cost by {part!r}; use one of: {', '.join(_GROUPABLE)}"
            )
        indexes.append(GPU_DIMENSIONS.index(name))
    return indexes


def gpu_report(
    windows_rows: Iterable[WindowRows], group_by: list[int], span: TimeRange
) -> dict[str, dict[str, object]]:
    """GPU time and cost of every covering window, grouped by GPU dimensions."""
    groups = gpu_sums(windows_rows, group_by)
    window = iso_window(span)
    return {
        name: _report(name, sums, window)
        for name, sums in sorted(("/".join(key), sums) for key, sums in groups.items())
    }


def gpu_sums(
    windows_rows: Iterable[WindowRows], group_by: Sequence[int]
) -> dict[tuple[str, ...], list[int]]:
    """Per group: gpu_ms, busy_ms, idle_ms, cost and idle cost (GPU cost units), then the cost
    at each tier it ran at, then what its GPU time would cost at every tier."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for rows in windows_rows:
        for dims, (gpu_ms, busy_ms, idle_ms) in rows.gpu.items():
            tier, price = dims[2], price_of_rates(dims[6])
            key = tuple(dims[i] or UNALLOCATED for i in group_by)
            sums = groups.setdefault(key, [0] * (5 + 2 * len(TIERS)))
            cost = cost_units(gpu_ms, price, tier)
            added = [gpu_ms, busy_ms, idle_ms, cost, cost_units(idle_ms, price, tier)]
            added += [cost if other == tier else 0 for other in TIERS]
            added += [cost_units(gpu_ms, price, other) for other in TIERS]
            for index, value in enumerate(added):
                sums[index] += value
    return groups


def _report(name: str, sums: list[int], window: dict[str, str]) -> dict[str, object]:
    gpu_ms, busy_ms, idle_ms, cost, idle_cost = sums[:5]
    by_tier = sums[5 : 5 + len(TIERS)]
    at_tier = sums[5 + len(TIERS) :]
    return {
        "name": name,
        "window": window,
        "start": window["start"],
        "end": window["end"],
        "gpuHours": float(gpu_ms / _MS_PER_HOUR),
        "utilizedHours": float(busy_ms / _MS_PER_HOUR),
        "busyHours": float(busy_ms / _MS_PER_HOUR),  # deprecated: utilizedHours
        "idleHours": float(idle_ms / _MS_PER_HOUR),
        "utilization": busy_ms / gpu_ms if gpu_ms else 0.0,
        "totalCost": float(units_to_dollars(cost)),
        "idleCost": float(units_to_dollars(idle_cost)),
        "costByTier": {t: float(units_to_dollars(u)) for t, u in zip(TIERS, by_tier, strict=True)},
        "costAtTier": {t: float(units_to_dollars(u)) for t, u in zip(TIERS, at_tier, strict=True)},
    }

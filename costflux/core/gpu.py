"""GPU cost: the pricing key of a GPU, what one sample costs, and its idle share.

GPU time is kept in integer milliseconds and priced when read, in *GPU cost units*:
pico-dollars x milliseconds / hour. ``gpu_ms x price_pico_per_hour`` is an exact integer
whatever the interval, so an hour of samples costs exactly one hour x price (a per-sample
rounding to the pico-dollar would not: 360 ten-second samples of a $3.50/h GPU would bill
$3.49999999992). Divide by ``UNITS_PER_PICO`` only to present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal

from costflux.core.money import PICO_PER_DOLLAR
from costflux.core.pricing import TIERS, GpuPrice

__all__ = [
    "DEFAULT_GPU_TYPES",
    "UNITS_PER_PICO",
    "busy_and_idle_ms",
    "cost_units",
    "gpu_type_for",
    "interval_ms_of",
    "pieces",
    "price_of_rates",
    "rates_key",
    "slice_rates",
    "split_in_proportion",
    "units_to_dollars",
]

#: GPU cost units per pico-dollar: one hour in milliseconds.
UNITS_PER_PICO = 3_600_000

#: NVML name -> pricing key, first match wins (case-insensitive search). Overridable per
#: exact NVML name (COSTFLUX_GPU_TYPE_MAP); a name matching none is slugged (see below).
DEFAULT_GPU_TYPES: tuple[tuple[str, str], ...] = (
    (r"H200", "nvidia-h200"),
    (r"H100.*(94|96)\s*GB", "nvidia-h100-94gb"),
    (r"H100", "nvidia-h100-80gb"),
    (r"A100.*80\s*GB", "nvidia-a100-80gb"),
    (r"A100", "nvidia-a100-40gb"),
    (r"A10G", "nvidia-a10g"),
    (r"\bA10\b", "nvidia-a10"),
    (r"L40S", "nvidia-l40s"),
    (r"\bL4\b", "nvidia-l4"),
    (r"\bT4\b", "nvidia-t4"),
    (r"V100", "nvidia-v100"),
)
_COMPILED = tuple((re.compile(pattern, re.IGNORECASE), key) for pattern, key in DEFAULT_GPU_TYPES)


def gpu_type_for(nvml_name: str, overrides: Mapping[str, str] | None = None) -> str:
    """The pricing key for an NVML device name.

    >>> gpu_type_for("NVIDIA H100 80GB HBM3")
    'nvidia-h100-80gb'
    >>> gpu_type_for("NVIDIA RTX 6000 Ada Generation")
    'nvidia-rtx-6000-ada-generation'
    >>> gpu_type_for("NVIDIA H100 80GB HBM3", {"NVIDIA H100 80GB HBM3": "h100-sxm"})
    'h100-sxm'
    """
    if overrides and nvml_name in overrides:
        return overrides[nvml_name]
    for pattern, key in _COMPILED:
        if pattern.search(nvml_name):
            return key
    slug = "-".join(re.findall(r"[a-z0-9]+", nvml_name.lower()))
    return slug if slug.startswith("nvidia") else f"nvidia-{slug}"


def interval_ms_of(interval_s: float) -> int:
    """A sample's interval in whole milliseconds (half to even), the unit GPU time is kept in.

    >>> interval_ms_of(10.0), interval_ms_of(9.9996)
    (10000, 10000)
    """
    return round(interval_s * 1000)


def pieces(end_ms: int, interval_ms: int, window_ms: int) -> list[tuple[int, int]]:
    """Cut the interval [end - interval, end) at window boundaries: (window start, ms) each.

    A sample is charged to the windows its GPU time fell in, so an hour of samples fills
    exactly one hour window whatever the samples' alignment.

    >>> pieces(65_000, 10_000, 60_000)
    [(0, 5000), (60000, 5000)]
    """
    out = []
    position = end_ms - interval_ms
    while position < end_ms:
        start = position - position % window_ms
        piece_end = min(start + window_ms, end_ms)
        out.append((start, piece_end - position))
        position = piece_end
    return out


def busy_and_idle_ms(
    gpu_ms: int, utilization_pct: float, idle_threshold_pct: float
) -> tuple[int, int]:
    """Busy time (GPU time x utilization, to the ms) and idle time (all of it under threshold).

    >>> busy_and_idle_ms(525, 99.0, 5.0)
    (520, 0)
    >>> busy_and_idle_ms(10_000, 4.9, 5.0)
    (490, 10000)
    """
    busy_ms = round(gpu_ms * utilization_pct / 100)
    return busy_ms, gpu_ms if utilization_pct < idle_threshold_pct else 0


def rates_key(price: GpuPrice) -> str:
    """The per-tier prices (pico-dollars/hour) as one row-key field: 'on_demand,spot,reserved'.

    GPU rows sum milliseconds, and carry their rates in the key, so that cost is computed
    exactly when read: ms x pico-dollars/hour has no rounding and no 64-bit limit in transit.
    """
    return ",".join(str(price.per_hour(tier)) for tier in TIERS)


def price_of_rates(key: str) -> GpuPrice:
    """Inverse of ``rates_key``."""
    on_demand, spot, reserved = (int(part) for part in key.split(","))
    return GpuPrice(on_demand, spot, reserved)


def slice_rates(key: str, slices: int, slices_total: int) -> str:
    """The rates of a MIG slice: each tier's price x slices / slices_total, to the pico-dollar.

    This is the slice's price, like a cloud's price for a MIG instance; the rounding is at
    most half a pico-dollar per hour (4.4 nano-dollars a year), and its time is still summed
    exactly.

    >>> slice_rates("3500000000000,1050000000000,2100000000000", 3, 7)
    '1500000000000,450000000000,900000000000'
    """
    return ",".join(
        str((2 * int(part) * slices + slices_total) // (2 * slices_total))
        for part in key.split(",")
    )


def cost_units(gpu_ms: int, price: GpuPrice, tier: str) -> int:
    """GPU time at a tier's price, in GPU cost units (pico-dollar x ms / hour).

    >>> units_to_dollars(cost_units(3_600_000, GpuPrice(3_500_000_000_000, 1, 1), "on_demand"))
    Decimal('3.5')
    """
    return gpu_ms * price.per_hour(tier)


def units_to_dollars(units: int) -> Decimal:
    """Exact dollars of an amount of GPU cost units (for presentation)."""
    return Decimal(units) / (UNITS_PER_PICO * PICO_PER_DOLLAR)


def split_in_proportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split an integer amount by weights, exactly: the parts sum to ``total``.

    Largest remainder, ties to the earlier weight, so the split is deterministic.
    All-zero weights split evenly.

    >>> split_in_proportion(10, [1, 1, 1])
    [4, 3, 3]
    """
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    remainders = sorted(
        range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i)
    )
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares

"""GPU cost: the pricing key of a GPU, what one sample costs, and its idle share.

Money here is kept in *GPU cost units*: pico-dollars x milliseconds / hour. A sample's cost is
``interval_ms x price_pico_per_hour``, an exact integer whatever the interval, so an hour of
samples sums to exactly one hour x price (a per-sample rounding to the pico-dollar would not:
360 ten-second samples of a $3.50/h GPU would bill $3.49999999992). Divide by
``UNITS_PER_PICO`` only to present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from costflux.core.money import PICO_PER_DOLLAR
from costflux.core.pricing import TIERS, GpuPrice

__all__ = [
    "DEFAULT_GPU_TYPES",
    "UNITS_PER_PICO",
    "GpuCharge",
    "charge",
    "gpu_type_for",
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


@dataclass(frozen=True, slots=True)
class GpuCharge:
    """What one sample of one GPU costs, in GPU cost units, and how it was used."""

    interval_ms: int
    busy_ms: int  # interval x utilization, to the millisecond
    idle_ms: int  # the whole interval when utilization is under the idle threshold
    cost_units: int  # at the sample's own pricing tier
    idle_units: int
    tier_units: tuple[int, ...]  # the same GPU time at each of TIERS (what-if by tier)


def charge(
    interval_s: float, utilization_pct: float, price: GpuPrice, tier: str,
    idle_threshold_pct: float,
) -> GpuCharge:
    """Price one sample: cost = interval x $/hour of its tier; idle cost when under threshold.

    >>> c = charge(10.0, 0.0, GpuPrice(3_500_000_000_000, 1, 1), "on_demand", 5.0)
    >>> units_to_dollars(c.cost_units * 360)
    Decimal('3.5')
    """
    interval_ms = _round(Decimal(interval_s) * 1000)
    busy_ms = _round(Decimal(interval_ms) * Decimal(utilization_pct) / 100)
    idle = utilization_pct < idle_threshold_pct
    tier_units = tuple(interval_ms * price.per_hour(name) for name in TIERS)
    cost_units = tier_units[TIERS.index(tier)]
    return GpuCharge(
        interval_ms=interval_ms,
        busy_ms=busy_ms,
        idle_ms=interval_ms if idle else 0,
        cost_units=cost_units,
        idle_units=cost_units if idle else 0,
        tier_units=tier_units,
    )


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


def _round(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))

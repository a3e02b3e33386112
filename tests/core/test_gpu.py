"""GPU cost: exact sample charges, idle cost, tier what-ifs and exact proportional splits."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from costflux.core.gpu import (
    UNITS_PER_PICO,
    charge,
    gpu_type_for,
    split_in_proportion,
    units_to_dollars,
)
from costflux.core.pricing import GpuPrice, parse_pricing_text

PRICES = parse_pricing_text(
    """
gpu_pricing:
  nvidia-a100-80gb: {on_demand: 3.5, spot: 1.2, reserved_1y: 2.1}
"""
)
A100 = PRICES.gpu_price("nvidia-a100-80gb", 0)


def test_an_hour_at_zero_utilization_costs_exactly_one_hour_all_idle() -> None:
    assert A100 is not None
    # 360 ten-second samples: a per-sample rounding to the pico-dollar would miss $3.50.
    charges = [charge(10.0, 0.0, A100, "on_demand", 5.0) for _ in range(360)]
    cost = sum(c.cost_units for c in charges)
    idle = sum(c.idle_units for c in charges)
    assert units_to_dollars(cost) == Decimal("3.5")
    assert idle == cost
    assert sum(c.idle_ms for c in charges) == 3_600_000
    assert sum(c.busy_ms for c in charges) == 0


def test_busy_gpu_has_no_idle_cost_and_utilization_is_busy_over_allocated() -> None:
    assert A100 is not None
    sample = charge(0.525, 99.0, A100, "spot", 5.0)
    assert sample.interval_ms == 525
    assert sample.busy_ms == 520  # 525 ms x 99 %, to the millisecond (519.75)
    assert sample.idle_units == 0 and sample.idle_ms == 0
    # Independent: 0.525 s x $1.20/h at spot.
    assert units_to_dollars(sample.cost_units) == Decimal("0.525") * Decimal("1.2") / 3600


def test_threshold_is_strict_and_configurable() -> None:
    assert A100 is not None
    assert charge(10, 4.9, A100, "on_demand", 5.0).idle_ms == 10_000
    assert charge(10, 5.0, A100, "on_demand", 5.0).idle_ms == 0
    assert charge(10, 9.0, A100, "on_demand", 10.0).idle_ms == 10_000


def test_tier_what_ifs_price_the_same_gpu_time_at_every_tier() -> None:
    assert A100 is not None
    sample = charge(3600, 50.0, A100, "reserved_1y", 5.0)
    dollars = [units_to_dollars(u) for u in sample.tier_units]
    assert dollars == [Decimal("3.5"), Decimal("1.2"), Decimal("2.1")]
    assert sample.cost_units == sample.tier_units[2]


def test_units_are_pico_dollar_milliseconds_per_hour() -> None:
    price = GpuPrice(on_demand=10**12, spot=10**12, reserved_1y=10**12)  # $1/hour
    one_ms = charge(0.001, 0.0, price, "on_demand", 5.0)
    assert one_ms.cost_units == 10**12  # 1 ms x 1e12 pico/h
    assert Decimal(one_ms.cost_units) / UNITS_PER_PICO == Decimal(10**12) / 3_600_000


def test_gpu_type_from_real_nvml_names_and_overrides() -> None:
    assert gpu_type_for("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb"
    assert gpu_type_for("NVIDIA A100-SXM4-80GB") == "nvidia-a100-80gb"
    assert gpu_type_for("NVIDIA A100-SXM4-40GB") == "nvidia-a100-40gb"
    assert gpu_type_for("NVIDIA A10G") == "nvidia-a10g"
    assert gpu_type_for("NVIDIA A10") == "nvidia-a10"
    assert gpu_type_for("Tesla T4") == "nvidia-t4"
    assert gpu_type_for("NVIDIA L4") == "nvidia-l4"
    assert gpu_type_for("NVIDIA L40S") == "nvidia-l40s"
    assert gpu_type_for("Quadro RTX 8000") == "nvidia-quadro-rtx-8000"
    assert gpu_type_for("Tesla T4", {"Tesla T4": "gcp-t4"}) == "gcp-t4"


@given(
    total=st.integers(min_value=0, max_value=10**24),
    weights=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30),
)
def test_split_is_exact_and_proportional(total: int, weights: list[int]) -> None:
    parts = split_in_proportion(total, weights)
    assert sum(parts) == total
    whole = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        ideal = Decimal(total) * weight / whole if whole else Decimal(total) / len(weights)
        assert abs(Decimal(part) - ideal) < 1

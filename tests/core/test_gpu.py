"""GPU cost: time cut at window edges, exact charges, idle, tier what-ifs, exact splits."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from costflux.core.gpu import (
    UNITS_PER_PICO,
    busy_and_idle_ms,
    cost_units,
    gpu_type_for,
    interval_ms_of,
    pieces,
    price_of_rates,
    rates_key,
    split_in_proportion,
    units_to_dollars,
)
from costflux.core.pricing import TIERS, GpuPrice
from costflux.core.pricing_file import parse_pricing_text

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
    # Ends 7 s past a minute, so every fifth sample straddles a window edge.
    ends = [7_000 + 10_000 * i for i in range(1, 361)]
    cut = [p for end in ends for p in pieces(end, interval_ms_of(10.0), 60_000)]
    gpu_ms = sum(ms for _, ms in cut)
    busy, idle = map(sum, zip(*(busy_and_idle_ms(ms, 0.0, 5.0) for _, ms in cut), strict=True))
    assert gpu_ms == idle == 3_600_000 and busy == 0
    assert units_to_dollars(cost_units(gpu_ms, A100, "on_demand")) == Decimal("3.5")
    assert units_to_dollars(cost_units(idle, A100, "on_demand")) == Decimal("3.5")


def test_pieces_cut_an_interval_at_window_edges_and_lose_nothing() -> None:
    assert pieces(60_000, 10_000, 60_000) == [(0, 10_000)]
    assert pieces(65_000, 10_000, 60_000) == [(0, 5_000), (60_000, 5_000)]
    assert pieces(125_000, 130_000, 60_000) == [(-60_000, 5_000), (0, 60_000), (60_000, 60_000),
                                                 (120_000, 5_000)]


@given(end=st.integers(-(10**12), 10**12), interval=st.integers(1, 3_600_000),
       window=st.sampled_from([1_000, 60_000, 3_600_000]))
def test_pieces_tile_the_interval(end: int, interval: int, window: int) -> None:
    cut = pieces(end, interval, window)
    assert sum(ms for _, ms in cut) == interval
    assert all(start % window == 0 and 0 < ms <= window for start, ms in cut)
    assert cut[0][0] <= end - interval < cut[0][0] + window


def test_busy_time_is_interval_times_utilization_to_the_millisecond() -> None:
    assert interval_ms_of(0.525) == 525
    assert busy_and_idle_ms(525, 99.0, 5.0) == (520, 0)  # 519.75 ms, half to even
    assert A100 is not None
    # Independent: 0.525 s x $1.20/h at spot.
    spot = units_to_dollars(cost_units(525, A100, "spot"))
    assert spot == Decimal("0.525") * Decimal("1.2") / 3600


def test_threshold_is_strict_and_configurable() -> None:
    assert busy_and_idle_ms(10_000, 4.9, 5.0)[1] == 10_000
    assert busy_and_idle_ms(10_000, 5.0, 5.0)[1] == 0
    assert busy_and_idle_ms(10_000, 9.0, 10.0)[1] == 10_000


def test_tier_what_ifs_price_the_same_gpu_time_at_every_tier() -> None:
    assert A100 is not None
    dollars = [units_to_dollars(cost_units(3_600_000, A100, tier)) for tier in TIERS]
    assert dollars == [Decimal("3.5"), Decimal("1.2"), Decimal("2.1")]
    assert price_of_rates(rates_key(A100)) == A100


def test_units_are_pico_dollar_milliseconds_per_hour() -> None:
    price = GpuPrice(on_demand=10**12, spot=10**12, reserved_1y=10**12)  # $1/hour
    assert cost_units(1, price, "on_demand") == 10**12  # 1 ms x 1e12 pico/h
    one_ms = Decimal(cost_units(1, price, "on_demand")) / UNITS_PER_PICO
    assert one_ms == Decimal(10**12) / 3_600_000


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

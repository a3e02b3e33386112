"""GPU samples: judging, pre-aggregation, allocation to teams and the tier view.

Expected money is recomputed with Decimal from hand-written $/hour, not with costflux code.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from costflux.core.aggregate import FlushRows
from costflux.core.allocation import IDLE, AllocationOptions, TimeRange, allocate
from costflux.core.gpu_report import gpu_report, parse_gpu_aggregate
from costflux.core.gpu_samples import GpuAggregate, judge_gpu
from costflux.core.ingest import IngestRules, PartitionClock
from costflux.core.pricing_file import parse_pricing_text
from costflux.core.rows import GPU_DIMENSIONS, DimKey, GpuDims, GpuSums, UsageSums, WindowRows
from costflux.schemas.deadletter import DeadLetterReason as R
from costflux.streams.metrics import CostMetrics
from tests.core.test_rows import stored_windows

PRICES = parse_pricing_text(
    """
gpu_pricing:
  nvidia-a100-80gb: {on_demand: 3.5, spot: 1.2, reserved_1y: 2.1}
  nvidia-t4: {on_demand: 0.5, spot: 0.15, reserved_1y: 0.3}
model_costs:
  m: {input_tokens: 0.001, output_tokens: 0.002}
"""
)
DOLLARS_PER_HOUR = {"nvidia-a100-80gb": {"on_demand": Decimal("3.5"), "spot": Decimal("1.2"),
                                         "reserved_1y": Decimal("2.1")},
                    "nvidia-t4": {"on_demand": Decimal("0.5"), "spot": Decimal("0.15"),
                                  "reserved_1y": Decimal("0.3")}}
HOUR_MS = 3_600_000
BASE_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z
NOW_MS = BASE_MS + 86_400_000
RULES = IngestRules(window_sizes_s=(60, 3600), allowed_lateness_ms=30_000,
                    max_future_ms=300_000, gpu_idle_threshold_pct=5.0)
HOUR = TimeRange(BASE_MS, BASE_MS + HOUR_MS)


def sample(end_ms: int = BASE_MS + 10_000, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "event_id": f"s-{end_ms}", "ts": end_ms / 1000, "interval_s": 10.0, "node": "n1",
        "gpu_uuid": "GPU-1", "gpu_index": 0, "gpu_model": "NVIDIA A100-SXM4-80GB",
        "gpu_type": "nvidia-a100-80gb", "pricing_tier": "on_demand", "utilization_pct": 50.0,
        "memory_used_bytes": 1, "memory_total_bytes": 2,
        "labels": {"model": "m", "team": "infra", "namespace": "serving"},
    }
    values.update(fields)
    return values


def raw(*samples: dict[str, Any]) -> bytes:
    return json.dumps(samples[0] if len(samples) == 1 else list(samples)).encode()


def test_a_sample_becomes_a_candidate_keyed_by_its_dimensions_and_price() -> None:
    judged = judge_gpu([(3, raw(sample()))], PartitionClock(), PRICES, RULES, NOW_MS)
    assert not judged.rejected
    (candidate,) = judged.candidates
    assert candidate.dims == ("n1", "nvidia-a100-80gb", "on_demand", "serving", "m", "infra",
                              "3500000000000,1200000000000,2100000000000")
    assert (candidate.position, candidate.interval_ms, candidate.ts_ms) == ("3", 10_000,
                                                                            BASE_MS + 10_000)


def test_the_model_falls_back_to_the_deployment_label() -> None:
    message = raw(sample(labels={"deployment": "m"}))
    (candidate,) = judge_gpu([(0, message)], PartitionClock(), PRICES, RULES, NOW_MS).candidates
    assert candidate.dims[3:6] == ("", "m", "")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (raw(sample(gpu_type="nvidia-b200")), R.UNKNOWN_GPU_TYPE),
        (raw(sample(end_ms=NOW_MS + 301_000)), R.FUTURE_TIMESTAMP),
        (raw(sample(utilization_pct=120)), R.ABSURD_VALUE),
        (raw(sample(pricing_tier="preemptible")), R.WRONG_TYPE),
        (b'{"event_id": "x", "utilization_pct": NaN}', R.NOT_FINITE),
        (b"{not json", R.BAD_JSON),
    ],
)
def test_bad_samples_are_dead_lettered_with_a_reason(value: bytes, reason: R) -> None:
    judged = judge_gpu([(9, value)], PartitionClock(), PRICES, RULES, NOW_MS)
    assert not judged.candidates
    ((offset, rejected),) = judged.rejected
    assert (offset, rejected.reason, rejected.original) == (9, reason, value)
    assert rejected.detail


def test_a_sample_whose_interval_starts_in_a_closed_window_is_late() -> None:
    clock = PartitionClock(BASE_MS + 10 * 60_000)  # watermark: 9.5 min past BASE
    ends = [BASE_MS + 9 * 60_000 + 5_000, BASE_MS + 9 * 60_000 + 15_000]
    judged = judge_gpu([(i, raw(sample(e))) for i, e in enumerate(ends)], clock, PRICES, RULES,
                       NOW_MS)
    # The first starts at 8:55, in a window that closed at 9:00; the second starts at 9:05.
    assert [offset for offset, r in judged.rejected if r.reason is R.LATE] == [0]
    assert [c.position for c in judged.candidates] == ["1"]


def test_one_bad_sample_in_a_batch_costs_only_itself() -> None:
    message = raw(sample(), sample(gpu_type="nvidia-b200"), sample(end_ms=BASE_MS + 20_000))
    judged = judge_gpu([(4, message)], PartitionClock(), PRICES, RULES, NOW_MS)
    assert [c.position for c in judged.candidates] == ["4:0", "4:2"]
    ((_, rejected),) = judged.rejected
    assert rejected.batch_index == 1 and json.loads(rejected.original)["gpu_type"] == "nvidia-b200"


def rows_of(*samples: dict[str, Any], threshold: float = 5.0) -> FlushRows:
    judged = judge_gpu([(i, raw(s)) for i, s in enumerate(samples)], PartitionClock(), PRICES,
                       RULES, NOW_MS)
    totals = GpuAggregate(60, threshold)
    totals.add_all(judged.candidates)
    return totals.rows((60, 3600))


def test_gpu_time_is_cut_at_window_edges_and_summed_in_every_window_size() -> None:
    flush = rows_of(sample(BASE_MS + 65_000, utilization_pct=2.0))  # 55 s - 65 s
    minute = {start - BASE_MS: rows for (size, start), rows in flush.gpu.items() if size == 60}
    assert {start: list(rows.values()) for start, rows in minute.items()} == {
        0: [[5_000, 100, 5_000]], 60_000: [[5_000, 100, 5_000]]
    }
    (hour,) = [rows for (size, _), rows in flush.gpu.items() if size == 3600]
    assert list(hour.values()) == [[10_000, 200, 10_000]]
    assert flush.usage == {}  # GPU samples add GPU rows only, kept apart from usage rows


# --- allocation ---------------------------------------------------------------------------


def gpu_row(model: str, team: str, gpu_ms: int, idle_ms: int, gpu_type: str = "nvidia-a100-80gb",
            tier: str = "on_demand") -> tuple[GpuDims, GpuSums]:
    price = PRICES.gpu_price(gpu_type, 0)
    assert price is not None
    rates = f"{price.on_demand},{price.spot},{price.reserved_1y}"
    dims = ("n1", gpu_type, tier, "serving", model, team, rates)
    assert dict(zip(GPU_DIMENSIONS, dims, strict=True))["model"] == model  # joins usage rows
    return dims, GpuSums(gpu_ms, gpu_ms - idle_ms, idle_ms)


def usage_row(model: str, team: str, cost_pico: int, tokens: int, requests: int,
              gpu_ms: int = 0) -> tuple[DimKey, UsageSums]:
    return (model, team, "", "", "serving", "", ""), UsageSums(
        cost_pico, tokens, 0, 0, requests, gpu_ms)


def window(*rows: tuple[DimKey, UsageSums] | tuple[GpuDims, GpuSums]) -> WindowRows:
    """One window holding ``rows``; a later row with the same dimensions replaces an earlier."""
    usage: dict[DimKey, UsageSums] = {}
    gpu: dict[GpuDims, GpuSums] = {}
    for dims, sums in rows:
        if isinstance(sums, GpuSums):
            gpu[dims] = sums
        else:
            usage[dims] = sums
    return WindowRows(usage, gpu)


def near(row: dict[str, Any], dollars: Decimal) -> bool:
    """The served exact total is the true amount rounded to the pico-dollar."""
    return abs(Decimal(str(row["totalCostExact"])) - dollars) <= Decimal("1e-12")


def dollars(ms: int, gpu_type: str = "nvidia-a100-80gb", tier: str = "on_demand") -> Decimal:
    return Decimal(ms) / HOUR_MS * DOLLARS_PER_HOUR[gpu_type][tier]


def test_gpu_cost_is_split_by_tokens_and_idle_goes_to_its_own_row() -> None:
    rows = window(gpu_row("m", "infra", 3_000_000, 600_000),
                  usage_row("m", "search", 10**12, 300, 1), usage_row("m", "ads", 0, 100, 3))
    result = allocate([rows], [1], HOUR)
    busy, idle = dollars(2_400_000), dollars(600_000)
    assert near(result["search"], 1 + busy * 3 / 4)
    assert near(result["ads"], busy / 4)
    assert near(result[IDLE], idle)
    assert result["search"]["idleCost"] == 0.0 and "infra" not in result
    by_requests = allocate([rows], [1], HOUR, AllocationOptions(weight="requests"))
    assert near(by_requests["ads"], busy * 3 / 4)


def test_gpu_cost_can_be_split_by_the_events_own_gpu_seconds() -> None:
    rows = window(gpu_row("m", "infra", 3_600_000, 0),
                  usage_row("m", "search", 0, 900, 9, gpu_ms=1_000),
                  usage_row("m", "ads", 0, 100, 1, gpu_ms=3_000))
    result = allocate([rows], [1], HOUR, AllocationOptions(weight="gpu_seconds"))
    assert near(result["ads"], Decimal("3.5") * 3 / 4)
    assert near(result["search"], Decimal("3.5") / 4)
    with pytest.raises(ValueError, match="cannot share GPU cost by 'watts'"):
        AllocationOptions(weight="watts")


def test_shared_idle_goes_to_the_users_too() -> None:
    rows = window(gpu_row("m", "infra", 3_600_000, 3_600_000),
                  usage_row("m", "search", 0, 1, 1), usage_row("m", "ads", 0, 2, 1))
    result = allocate([rows], [1], HOUR, AllocationOptions(share_idle=True))
    assert IDLE not in result
    assert near(result["ads"], Decimal("3.5") * 2 / 3)
    assert result["ads"]["idleCost"] == pytest.approx(3.5 * 2 / 3)


def test_gpu_time_of_an_unused_model_is_charged_to_the_gpu_labels() -> None:
    rows = window(gpu_row("idle-model", "research", 3_600_000, 0, "nvidia-t4", "spot"),
                  usage_row("m", "search", 5, 1, 1))
    result = allocate([rows], [1], HOUR)
    assert near(result["research"], Decimal("0.15"))
    assert result["research"]["gpuCost"] == 0.15 and result["research"]["requests"] == 0


@given(
    gpus=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 100)), min_size=1, max_size=4),
    users=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 10**6)), max_size=6),
    share=st.booleans(),
)
def test_allocation_never_creates_or_loses_a_unit(
    gpus: list[tuple[int, int]], users: list[tuple[str, int]], share: bool
) -> None:
    rows = window(
        *[gpu_row("m", f"t{index}", gpu_ms, gpu_ms * idle_pct // 100)
          for index, (gpu_ms, idle_pct) in enumerate(gpus)],
        *[usage_row("m", team, 0, tokens, 1) for team, tokens in users],
    )
    result = allocate([rows], [1], HOUR, AllocationOptions(share_idle=share))
    total = sum(Decimal(r["totalCostExact"]) for r in result.values())
    expected = sum(dollars(gpu_ms) for gpu_ms, _ in gpus)
    assert abs(total - expected) <= Decimal("1e-12") * len(result)


def test_gpu_report_by_tier_with_what_ifs() -> None:
    rows = window(gpu_row("m", "a", 3_600_000, 3_600_000, tier="spot"),
                  gpu_row("m", "b", 1_800_000, 0, tier="reserved_1y"),
                  usage_row("m", "a", 1, 1, 1))
    report = gpu_report([rows], parse_gpu_aggregate("gpu_type"), HOUR)["nvidia-a100-80gb"]
    assert (report["gpuHours"], report["idleHours"], report["utilizedHours"]) == (1.5, 1.0, 0.5)
    assert report["busyHours"] == report["utilizedHours"]  # the old name, for one release
    assert report["totalCost"] == pytest.approx(float(Decimal("1.2") + Decimal("2.1") / 2))
    assert report["idleCost"] == pytest.approx(1.2)
    assert report["costByTier"] == pytest.approx({"on_demand": 0, "spot": 1.2,
                                                  "reserved_1y": 1.05})
    assert report["costAtTier"] == pytest.approx({"on_demand": 5.25, "spot": 1.8,
                                                  "reserved_1y": 3.15})
    with pytest.raises(ValueError, match="cannot aggregate GPU cost by 'gpu'"):
        parse_gpu_aggregate("gpu")


# --- metrics ------------------------------------------------------------------------------


def test_utilization_gauge_is_absent_for_a_gpu_that_stopped_reporting() -> None:
    metrics = CostMetrics(CollectorRegistry())
    messages = []
    for step in range(1, 8):
        end = BASE_MS + step * 10_000
        messages.append(raw(sample(end, gpu_uuid="GPU-1", event_id=f"a{step}", utilization_pct=40)))
        if step <= 2:  # GPU-2 errors after its second sample and is skipped from then on
            messages.append(raw(sample(end, gpu_uuid="GPU-2", event_id=f"b{step}")))
    judged = judge_gpu(list(enumerate(messages)), PartitionClock(), PRICES, RULES, NOW_MS)
    metrics.observe_gpu_samples(judged.candidates[:4])
    gauge = "llm_gpu_utilization_ratio"
    assert metrics.registry.get_sample_value(
        gauge, {"node": "n1", "gpu_uuid": "GPU-2", "gpu_type": "nvidia-a100-80gb"}) == 0.5
    metrics.observe_gpu_samples(judged.candidates[4:])
    assert metrics.registry.get_sample_value(
        gauge, {"node": "n1", "gpu_uuid": "GPU-2", "gpu_type": "nvidia-a100-80gb"}) is None
    assert metrics.registry.get_sample_value(
        gauge, {"node": "n1", "gpu_uuid": "GPU-1", "gpu_type": "nvidia-a100-80gb"}) == 0.4


# --- MIG instances ------------------------------------------------------------------------


def mig(slices: int, profile: str = "3g.40gb") -> dict[str, Any]:
    return {"parent_gpu_uuid": "GPU-1", "profile": profile, "slices": slices, "slices_total": 7}


def test_an_hour_of_a_mig_slice_costs_its_share_of_the_gpu_and_idles_without_a_process() -> None:
    hour = []
    for step in range(1, 361):
        end = BASE_MS + step * 10_000
        hour.append(sample(end, event_id=f"busy-{step}", gpu_uuid="MIG-a", utilization_pct=None,
                           mig=mig(3), labels={"model": "m", "team": "a", "pids": "400"}))
        hour.append(sample(end, event_id=f"idle-{step}", gpu_uuid="MIG-b", utilization_pct=None,
                           mig=mig(1, "1g.10gb"), labels={"model": "m", "team": "b"}))
    judged = judge_gpu(list(enumerate(map(raw, hour))), PartitionClock(), PRICES, RULES, NOW_MS)
    assert not judged.rejected
    totals = GpuAggregate(60, RULES.gpu_idle_threshold_pct)
    totals.add_all(judged.candidates)
    (hour_rows,) = stored_windows(totals.rows((3600,))).values()
    report = gpu_report([hour_rows], parse_gpu_aggregate("label:team"), HOUR)
    # $3.50/h x 3/7 = $1.50 exactly; x 1/7 = $0.5 exactly; 1.2 x 1/7 rounds to the pico-dollar.
    assert Decimal(str(report["a"]["totalCost"])) == Decimal("1.5")
    assert report["a"]["idleCost"] == 0 and report["a"]["utilization"] == 1.0
    assert Decimal(str(report["b"]["totalCost"])) == Decimal("0.5")
    assert Decimal(str(report["b"]["idleCost"])) == Decimal("0.5")
    spot_b = Decimal(str(report["b"]["costAtTier"]["spot"]))
    assert abs(spot_b - Decimal("1.2") / 7) <= Decimal("0.5e-12")


def test_a_sample_without_utilization_must_be_a_mig_instance() -> None:
    judged = judge_gpu([(0, raw(sample(utilization_pct=None)))], PartitionClock(), PRICES,
                       RULES, NOW_MS)
    assert [r.reason for _, r in judged.rejected] == [R.INVALID_VALUE]
    assert "utilization_pct" in judged.rejected[0][1].detail
    too_many = sample(utilization_pct=None, mig={**mig(3), "slices": 8})
    (rejected,) = judge_gpu([(0, raw(too_many))], PartitionClock(), PRICES, RULES,
                            NOW_MS).rejected
    assert "mig.slices" in rejected[1].detail


def test_a_mig_instance_has_no_utilization_gauge_rather_than_a_zero() -> None:
    metrics = CostMetrics(CollectorRegistry())
    message = raw(sample(gpu_uuid="MIG-a", utilization_pct=None, mig=mig(1)))
    metrics.observe_gpu_samples(
        judge_gpu([(0, message)], PartitionClock(), PRICES, RULES, NOW_MS).candidates)
    assert metrics.registry.get_sample_value(
        "llm_gpu_utilization_ratio",
        {"node": "n1", "gpu_uuid": "MIG-a", "gpu_type": "nvidia-a100-80gb"}) is None
    assert metrics.registry.get_sample_value("costflux_gpu_samples_total") == 1

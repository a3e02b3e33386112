"""Savings advice on hand-built hourly rows, every figure worked out by hand below.

Two hours of data, so a month (30 days) is 360 times the measured span.

- Pool llama-2-70b on A100 (on-demand $3.5, spot $1.2, reserved $2.1 an hour): 3 GPUs both
  hours; busy 1.26 GPU-hours in the first (needs 1 GPU at 70 %), 3.78 in the second (needs 2).
  Rightsize: 6 GPU-h ($21) -> 3 GPU-h ($10.5): $7,560 -> $3,780 a month.
  Reserved: 1 GPU in every hour: 2 GPU-h at $3.5 -> $2.1: $2,520 -> $1,512.
  Spot: the second hour's other GPU: $3.5 -> $1.2: $1,260 -> $432.
- Pool llama-2-7b on A10 (already spot, $0.5): 1 GPU, 20 % busy, 7,200 requests of 400 tokens
  (1/s): batching 30 % of $1: $360 -> $252.
- gpt-4: 2,000 requests, 1M input tokens (400k cached at $0.015/1K), 200k output: $36, and the
  cache saved $6. Its outputs average 100 tokens: half of it to llama-2-70b, which costs $1.12
  for the same tokens: $6,480 -> $201.6.
- Current: tokens $2.8 + $0.36 + $36, GPUs $21 + $1 = $61.16 -> $22,017.6 a month.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from costflux.core.advice import Assumptions, advise, measurable
from costflux.core.advice_config import AdviceConfigError, parse_assumptions_text
from costflux.core.advice_report import advice_answer, render_advice
from costflux.core.allocation import TimeRange
from costflux.core.pricing import ModelPrice
from costflux.core.rows import DimKey, GpuDims, GpuSums, UsageSums, WindowRows

HOUR = 3_600_000
A100 = "3500000000000,1200000000000,2100000000000"
A10 = "1500000000000,500000000000,900000000000"
PRICES = {  # pico-dollars per token
    "llama-2-70b": ModelPrice(800_000, 1_600_000, 800_000),
    "llama-2-7b": ModelPrice(100_000, 200_000, 100_000),
    "gpt-4": ModelPrice(30_000_000, 60_000_000, 15_000_000),
}


def gpu_dims(model: str, gpu_type: str, tier: str, rates: str) -> GpuDims:
    return ("node-1", gpu_type, tier, "ml", model, "platform", rates)


def usage_dims(model: str) -> DimKey:
    return (model, "search", "", "", "ml", "", "")


def hours() -> list[tuple[TimeRange, list[WindowRows]]]:
    a100 = gpu_dims("llama-2-70b", "nvidia-a100-80gb", "on_demand", A100)
    a10 = gpu_dims("llama-2-7b", "nvidia-a10", "spot", A10)
    first = WindowRows(
        usage={
            usage_dims("llama-2-70b"): UsageSums(2_800_000_000_000, 2_500_000, 500_000, 0, 1000),
            usage_dims("llama-2-7b"): UsageSums(360_000_000_000, 2_160_000, 720_000, 0, 7200),
            usage_dims("gpt-4"): UsageSums(36_000_000_000_000, 1_000_000, 200_000, 400_000, 2000,
                                           0, 6_000_000_000_000),
        },
        gpu={a100: GpuSums(3 * HOUR, 1_260_000, 0), a10: GpuSums(HOUR, 720_000, 0)},
    )
    second = WindowRows(gpu={a100: GpuSums(3 * HOUR, 3_780_000, 0),
                             a10: GpuSums(HOUR, 720_000, 0)})
    return [(TimeRange(0, HOUR), [first]), (TimeRange(HOUR, 2 * HOUR), [second])]


def answer(assumptions: Assumptions | None = None) -> dict[str, Any]:
    return advice_answer(advise(hours(), PRICES.get, assumptions or Assumptions()))


def figures(item: dict[str, Any]) -> tuple[str, str]:
    return str(item["monthlyBeforeExact"]), str(item["monthlyAfterExact"])


def test_every_figure_equals_the_hand_arithmetic() -> None:
    data = answer()
    advice = {(a["kind"], a["target"]): figures(a) for a in data["advice"]}
    a100 = "llama-2-70b on nvidia-a100-80gb"
    assert advice == {
        ("rightsize", a100): ("7560.000000000000", "3780.000000000000"),
        ("batching", "llama-2-7b on nvidia-a10"): ("360.000000000000", "252.000000000000"),
        ("reserved", a100): ("2520.000000000000", "1512.000000000000"),
        ("spot", a100): ("1260.000000000000", "432.000000000000"),
        ("routing", "gpt-4 -> llama-2-70b"): ("6480.000000000000", "201.600000000000"),
    }
    assert [a["kind"] for a in data["advice"]] == [
        "rightsize", "batching", "reserved", "spot", "routing"]
    assert data["currentMonthlyCostExact"] == "22017.600000000000"
    assert data["window"] == {"start": "1970-01-01T00:00:00Z", "end": "1970-01-01T02:00:00Z"}
    cache = data["cacheAchieved"][0]
    assert cache["target"] == "gpt-4"
    assert figures(cache) == ("15120.000000000000", "12960.000000000000")
    assert cache["evidence"]["cachedSharePct"] == 40.0


def test_roi_table_rows_and_total() -> None:
    roi = {r["item"]: (*figures(r), r["savingPct"]) for r in answer()["roi"]}
    saving = 3780 + 108 + 1008 + 828 + Fraction("6278.4")
    assert roi["Total"] == ("22017.600000000000", "10015.200000000000",
                            round(float(saving / Fraction("22017.6") * 100), 1))
    assert roi["Scale down idle GPUs"][2] == 50.0
    assert roi["Spot GPUs for the burst"][2] == round(828 / 1260 * 100, 1)
    assert roi["Prompt cache (achieved)"][2] == round(6 / 42 * 100, 1)
    assert list(roi)[-2:] == ["Total", "Prompt cache (achieved)"]


def test_evidence_states_what_was_measured() -> None:
    rightsize = answer()["advice"][0]
    assert rightsize["evidence"] == {
        "gpuHours": 6.0, "utilizationPct": pytest.approx(100 * 5.04 / 21.6),
        "averageGpus": 3.0, "averageGpusNeeded": 1.5,
    }
    assert any("70% utilization" in text for text in rightsize["assumptions"])


def test_a_configured_route_and_stricter_assumptions() -> None:
    assumptions = Assumptions(routes={"gpt-4": "llama-2-7b"}, target_utilization_pct=Fraction(20),
                              batching_max_utilization_pct=Fraction(10))
    data = answer(assumptions)
    kinds = {(a["kind"], a["target"]): figures(a) for a in data["advice"]}
    # gpt-4's tokens cost $0.14 at llama-2-7b's rates: half of $36 -> $0.07, a month x 360
    assert kinds[("routing", "gpt-4 -> llama-2-7b")] == ("6480.000000000000", "25.200000000000")
    # at 20 % the first hour needs ceil(1.26 / 0.72) = 2 GPUs, the second ceil(3.78 / 0.72) = 6
    # (more than the 3 there): only the first hour's third GPU goes, $3.5 of $21
    assert kinds[("rightsize", "llama-2-70b on nvidia-a100-80gb")] == (
        "7560.000000000000", "6300.000000000000")
    assert not any(kind == "batching" for kind, _ in kinds)


def test_no_data_gives_no_advice() -> None:
    empty = advise([(TimeRange(0, HOUR), [WindowRows()])], PRICES.get)
    assert advice_answer(empty)["advice"] == []
    assert "nothing to advise" in render_advice(advice_answer(empty), "table")


def test_rendered_roi_table_has_the_seed_columns() -> None:
    text = render_advice(answer(), "markdown")
    assert "| Item | Before | After | Saving |" in text
    assert "| Total | $22,017.60 | $10,015.20 | 54.5% |" in text
    assert "assumes" in text


def test_advice_file_overrides_and_names_bad_fields() -> None:
    parsed = parse_assumptions_text(
        "target_utilization_pct: 60.5\nmin_gpus: 0\nroutes: {gpt-4: gpt-4o-mini}\n")
    assert parsed.target_utilization_pct == Fraction("60.5")
    assert parsed.min_gpus == 0 and parsed.routes == {"gpt-4": "gpt-4o-mini"}
    for text, named in (("target_utilization_pct: 0", "target_utilization_pct"),
                        ("routing_share_pct: 150", "routing_share_pct"),
                        ("min_gpus: -1", "min_gpus"), ("min_gpus: two", "min_gpus"),
                        ("routes: [gpt-4]", "routes"), ("speedup: 2", "speedup"),
                        ("month_days: 0", "month_days")):
        with pytest.raises(AdviceConfigError, match=named):
            parse_assumptions_text(text)


def test_the_measured_span_stops_at_the_newest_event_and_the_oldest_window() -> None:
    span = TimeRange(0, 10 * HOUR)
    assert measurable(span, 2 * HOUR, 5 * HOUR + 61_000, 60) == TimeRange(2 * HOUR,
                                                                          5 * HOUR + 120_000)
    assert measurable(span, None, None, 60) is None
    assert measurable(span, 11 * HOUR, 12 * HOUR, 60) is None

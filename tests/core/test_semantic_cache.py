"""Semantic cache hits (``cache_hit: true``) through the core, against Decimal recomputations.

A hit is a request served without calling the model: it adds a request, no cost and no tokens,
one semantic cache hit, and what it would have cost - its tokens at the model's price in force
at the hit's own event time - to the semantic cache savings.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from costflux.cache.policy import TokenUsage
from costflux.cache.usage import usage_event
from costflux.core.advice import advise
from costflux.core.advice_report import advice_answer, render_advice
from costflux.core.allocation import AllocationOptions, TimeRange, allocate, parse_aggregate
from costflux.core.ingest import IngestRules, PartitionClock, aggregate, judge
from costflux.core.pricing import ModelPrice
from costflux.core.pricing_file import parse_pricing_text
from costflux.core.rows import (
    GpuSums,
    UsageSums,
    WindowRows,
    add_sums,
    decode_usage_dims,
    decode_usage_sums,
)
from costflux.schemas.deadletter import DeadLetterReason
from costflux.streams.metrics import CostMetrics
from tests.core.test_rows import stored_windows

MINUTE_MS, HOUR_MS = 60_000, 3_600_000
BASE_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z
CHANGE_MS = BASE_MS + 30 * MINUTE_MS  # m's prices triple at 00:30
PRICES = parse_pricing_text(
    """
model_costs:
  m:
    input_tokens: 0.001
    output_tokens: 0.002
    cached_input_tokens: 0.0005
    changes:
      - effective_from: "2024-05-01T00:30:00Z"
        input_tokens: 0.003
        output_tokens: 0.006
        cached_input_tokens: 0.0015
  flat:
    input_per_1m: 15
    output_per_1m: 75
"""
)
RULES = IngestRules(window_sizes_s=(60, 3600), allowed_lateness_ms=10**12, max_future_ms=10**12)
NOW_MS = BASE_MS + 10 * HOUR_MS
PICO = Decimal(10) ** 12


def rates(model: str, ts_ms: int) -> tuple[Decimal, Decimal, Decimal]:
    """$/token (input, output, cached input) as the price file above writes them."""
    if model == "flat":
        return Decimal(15) / 10**6, Decimal(75) / 10**6, Decimal(15) / 10**6
    per_1k = ("0.001", "0.002", "0.0005") if ts_ms < CHANGE_MS else ("0.003", "0.006", "0.0015")
    rate_in, rate_out, rate_cached = (Decimal(r) / 1000 for r in per_1k)
    return rate_in, rate_out, rate_cached


def price(ev: dict[str, Any], ts_ms: int) -> Decimal:
    """What the model bills for the event's tokens at its event time ``ts_ms``."""
    rate_in, rate_out, rate_cached = rates(ev["model"], ts_ms)
    cached = ev["cached_input_tokens"]
    return (ev["input_tokens"] - cached) * rate_in + cached * rate_cached \
        + ev["output_tokens"] * rate_out


def event(event_id: str, ts_ms: int, *, hit: bool | None = None, model: str = "m",
          input_tokens: int = 1000, output_tokens: int = 100, cached: int = 0,
          team: str = "search", gpu_seconds: float | None = None) -> dict[str, Any]:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
    document: dict[str, Any] = {
        "event_id": event_id,
        "ts": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cached_input_tokens": cached, "labels": {"team": team} if team else {},
    }
    if hit is not None:
        document["cache_hit"] = hit
    if gpu_seconds is not None:
        document["gpu_seconds"] = gpu_seconds
    return document


def judged(events: list[dict[str, Any]]) -> list[Any]:
    result = judge([(i, json.dumps(ev).encode()) for i, ev in enumerate(events)],
                   PartitionClock(), PRICES, RULES, NOW_MS)
    assert result.rejected == []
    return result.candidates


def windows_of(events: list[dict[str, Any]]) -> dict[tuple[int, int], WindowRows]:
    """Window rows as the serving view reads them, once the events' flush is stored."""
    return stored_windows(aggregate(judged(events), 60).rows((60, 3600)))


def test_a_hit_counts_a_request_and_its_avoided_cost_priced_at_its_own_time() -> None:
    events = [
        event("miss", CHANGE_MS - 1),
        event("hit-old-price", CHANGE_MS - 1, hit=True, cached=400),
        event("hit-new-price", CHANGE_MS, hit=True, cached=400, gpu_seconds=2.5),
        event("no-field", CHANGE_MS + 1),
        event("explicit-miss", CHANGE_MS + 2, hit=False, cached=400),
    ]
    candidates = judged(events)
    # m at 00:29:59.999: 600 x $0.000001 + 400 x $0.0000005 + 100 x $0.000002 = $0.001
    # at 00:30: three times that
    assert [c.semantic_saving_pico for c in candidates] == [
        None, 1_000_000_000, 3_000_000_000, None, None]
    hits = [c for c in candidates if c.semantic_saving_pico is not None]
    for hit in hits:  # nothing was sent upstream: no cost, tokens, prompt-cache saving, GPU
        assert (hit.cost_pico, hit.input_tokens, hit.output_tokens, hit.cached_input_tokens,
                hit.gpu_ms, hit.cache_saving_pico) == (0, 0, 0, 0, 0, 0)
    assert [c.cost_pico for c in candidates if c.semantic_saving_pico is None] == [
        1_200_000_000, 3_600_000_000, 3_000_000_000]


HIT_SPECS = st.lists(st.tuples(
    st.integers(min_value=-3 * MINUTE_MS, max_value=3 * MINUTE_MS),  # around the change
    st.sampled_from(["m", "flat"]),
    st.integers(min_value=0, max_value=2_000_000),
    st.integers(min_value=0, max_value=200_000),
    st.integers(min_value=0, max_value=2_000_000),
    st.sampled_from(["search", "ads", ""]),
    st.sampled_from([True, False, None]),  # hit, an explicit miss, no field
), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(HIT_SPECS)
def test_sums_and_allocation_equal_a_decimal_recomputation(specs: list[tuple[Any, ...]]) -> None:
    events = [event(f"e{i}", CHANGE_MS + dt, hit=hit, model=model, input_tokens=inp,
                    output_tokens=out, cached=min(cached, inp), team=team)
              for i, (dt, model, inp, out, cached, team, hit) in enumerate(specs)]
    # [cost, input, output, requests, hits, avoided] by model/team
    expected: dict[str, list[Any]] = defaultdict(
        lambda: [Decimal(0), 0, 0, 0, 0, Decimal(0)])
    for ev, spec in zip(events, specs, strict=True):
        group = expected[f"{ev['model']}/{ev['labels'].get('team') or '__unallocated__'}"]
        group[3] += 1
        if ev.get("cache_hit"):
            group[4] += 1
            group[5] += price(ev, CHANGE_MS + spec[0])
        else:
            group[0] += price(ev, CHANGE_MS + spec[0])
            group[1] += ev["input_tokens"]
            group[2] += ev["output_tokens"]

    windows = windows_of(events)
    for size_s in (60, 3600):  # every window size holds every event once
        span = TimeRange(BASE_MS, BASE_MS + HOUR_MS)
        tiles = [rows for (size, _), rows in windows.items() if size == size_s]
        got = {name: [Decimal(row["totalCostExact"]), row["inputTokens"], row["outputTokens"],
                      row["requests"], row["semanticCacheHits"],
                      Decimal(row["semanticCacheSavingsExact"])]
               for name, row in allocate(tiles, parse_aggregate("model,label:team"),
                                         span).items()}
        assert got == expected, size_s
        for row in allocate(tiles, parse_aggregate("model"), span).values():
            assert row["semanticCacheSavings"] == pytest.approx(
                float(Decimal(str(row["semanticCacheSavingsExact"]))), rel=1e-12)


def test_rows_written_before_the_semantic_cache_fields_still_load() -> None:
    assert UsageSums._fields[7:9] == ("semantic_cache_hits", "semantic_saving_pico")
    # Rows as older writers left them in the store (five dimensions; seven sums, or five)
    # beside a full one, decoded as the serving view decodes every row.
    old_key, new_key = '["m","search","","",""]', '["m","search","","","","",""]'
    older = decode_usage_sums("10,1,2,0,1,0,3")
    # A flush adding a full row to the older one: the missing fields count as zero.
    assert add_sums(older, decode_usage_sums("20,3,4,0,2,0,0,1,7")) == UsageSums(
        30, 4, 6, 0, 3, 0, 3, 1, 7)

    windows = [WindowRows({decode_usage_dims(old_key): older}),
               WindowRows({decode_usage_dims(old_key): decode_usage_sums("5,1,1,0,1")}),
               WindowRows({decode_usage_dims(new_key): decode_usage_sums(
                   "0,0,0,0,2,0,0,2,4000000")})]
    row = allocate(windows, parse_aggregate("model"), TimeRange(0, HOUR_MS))["m"]
    assert (row["requests"], row["semanticCacheHits"], row["semanticCacheSavingsExact"],
            row["totalCostExact"]) == (4, 2, "0.000004000000", "0.000000000015")

    registry = CollectorRegistry()
    metrics = CostMetrics(registry)
    dims = decode_usage_dims('["m","search","","app","ns"]')
    metrics.count_row(dims, older)
    labels = {"model": "m", "team": "search", "app": "app", "namespace": "ns"}
    assert registry.get_sample_value("llm_cache_hits_total", labels) == 0
    assert registry.get_sample_value("llm_cache_savings_dollars_total", labels) == 0
    metrics.count_row(dims, decode_usage_sums("0,0,0,0,3,0,0,3,2500000000000"))
    assert registry.get_sample_value("llm_cache_hits_total", labels) == 3
    assert registry.get_sample_value("llm_cache_savings_dollars_total", labels) == 2.5
    assert registry.get_sample_value("llm_requests_total", labels) == 4
    assert registry.get_sample_value("llm_request_cost_dollars_total", labels) == 1e-11


@pytest.mark.parametrize("value", ["true", 1, None, "yes"])
def test_cache_hit_must_be_a_json_boolean(value: object) -> None:
    document = event("e", BASE_MS)
    document["cache_hit"] = value
    result = judge([(0, json.dumps(document).encode())], PartitionClock(), PRICES, RULES, NOW_MS)
    assert [r.reason for _, r in result.rejected] == [DeadLetterReason.WRONG_TYPE]
    assert "cache_hit" in result.rejected[0][1].detail


A100 = "3500000000000,1200000000000,2100000000000"  # pico-$ an hour: on demand, spot, reserved


def test_gpu_cost_split_by_requests_leaves_out_the_hits() -> None:
    # One GPU busy all hour ($3.5) for m. ads sent 1 request; search sent 1 and had 3 hits:
    # only the requests that reached the model used its GPU, so each team pays half.
    rows = WindowRows(
        usage={("m", "ads", "", "", "", "", ""): UsageSums(7, 10, 1, 0, 1, 0, 0, 0, 0),
               ("m", "search", "", "", "", "", ""): UsageSums(7, 10, 1, 0, 4, 0, 0, 3, 99)},
        gpu={("node-1", "nvidia-a100-80gb", "on_demand", "ml", "m", "", A100):
             GpuSums(HOUR_MS, HOUR_MS, 0)},
    )
    by_team = allocate([rows], parse_aggregate("label:team"), TimeRange(0, HOUR_MS),
                       AllocationOptions(weight="requests"))
    assert [by_team[team]["gpuCost"] for team in ("ads", "search")] == [1.75, 1.75]


def test_advice_reports_what_the_semantic_cache_saved_by_model_and_team() -> None:
    # One hour (a month is 720 of them). gpt-4: search paid $36 for 2,000 requests and had 500
    # hits worth $9; ads had only hits, 100 worth $3. llama-2-70b's row predates the fields.
    rows = WindowRows({
        ("gpt-4", "search", "", "", "ml", "", ""): UsageSums(
            36 * 10**12, 1_000_000, 200_000, 0, 2500, 0, 0, 500, 9 * 10**12),
        ("gpt-4", "ads", "", "", "ml", "", ""): UsageSums(0, 0, 0, 0, 100, 0, 0, 100, 3 * 10**12),
        decode_usage_dims('["llama-2-70b","search","","","ml"]'): decode_usage_sums(
            "2800000000000,2500000,500000,0,1000,0,0"),
    })
    prices = {"gpt-4": ModelPrice(30_000_000, 60_000_000, 15_000_000),
              "llama-2-70b": ModelPrice(800_000, 1_600_000, 800_000)}
    data = advice_answer(advise([(TimeRange(0, HOUR_MS), [rows])], prices.get))
    [semantic] = [a for a in data["cacheAchieved"] if a["kind"] == "semantic_cache"]
    assert semantic["target"] == "gpt-4"
    # before: ($36 + $12) x 720, after: $36 x 720
    assert (semantic["monthlyBeforeExact"], semantic["monthlyAfterExact"],
            semantic["savingPct"]) == ("34560.000000000000", "25920.000000000000", 25.0)
    evidence = semantic["evidence"]
    assert (evidence["hits"], evidence["savedInWindowExact"]) == (600, "12.000000000000")
    assert evidence["hitSharePct"] == pytest.approx(100 * 600 / 2600)
    assert evidence["byTeam"] == {
        "search": {"hits": 500, "savedInWindow": 9.0, "savedInWindowExact": "9.000000000000"},
        "ads": {"hits": 100, "savedInWindow": 3.0, "savedInWindowExact": "3.000000000000"},
    }
    assert [r["item"] for r in data["roi"]][-2:] == ["Total", "Semantic cache (achieved)"]
    # the other advice sees only the requests the model served: routing names 2,000
    [routing] = [a for a in data["advice"] if a["kind"] == "routing"]
    assert routing["evidence"]["requests"] == 2000
    text = render_advice(data, "table")
    assert "Semantic cache (achieved): gpt-4 - saves $8,640.00/month (25.0%)" in text
    assert "saved $12.00 in the window (600 hits): search $9.00, ads $3.00" in text


def test_the_cache_proxys_hit_event_is_judged_a_semantic_cache_hit() -> None:
    # The contract between costflux cache and the pipeline: the proxy's own event builder.
    moment = datetime(2024, 5, 1, 0, 45, tzinfo=UTC)
    events = [usage_event(event_id=f"cache:{hit}", ts=moment, model="m",
                          usage=TokenUsage(1000, 100).fields(), labels={"team": "search"},
                          latency_ms=3.0, ok=True, cache_hit=hit) for hit in (True, False)]
    hit, miss = judged(events)
    # after the change: 1000 x $0.000003 + 100 x $0.000006 = $0.0036, as cost or as saving
    assert (hit.cost_pico, hit.semantic_saving_pico) == (0, 3_600_000_000)
    assert (miss.cost_pico, miss.semantic_saving_pico) == (3_600_000_000, None)

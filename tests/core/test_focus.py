"""FOCUS rows built from hand-made allocation rows: exact sums, billing periods, splits."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costflux.core.focus import (
    COLUMNS,
    FocusError,
    csv_cells,
    focus_rows,
    gpu_use,
    split_group_name,
)

NONE = "__unallocated__"


def allocation(name: str, start: str, end: str, total: str, **fields: Any) -> dict[str, Any]:
    """An allocation row as the API serves it (floats only where the API has them)."""
    row: dict[str, Any] = {"name": name, "start": start, "end": end, "totalCostExact": total,
                           "totalCost": float(total), "gpuCost": 0.0, "idleCost": 0.0,
                           "inputTokens": 0, "outputTokens": 0, "cachedInputTokens": 0,
                           "requests": 0}
    row.update(fields)
    return row


def one_set(*rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in rows}


HOUR = ("2024-01-31T23:00:00Z", "2024-02-01T00:00:00Z")
NEXT_HOUR = ("2024-02-01T00:00:00Z", "2024-02-01T01:00:00Z")


def test_billed_cost_sums_to_the_rows_exact_costs_exactly() -> None:
    sets = [
        one_set(
            allocation("gpt-4/search/rag/web/ml-prod", *HOUR, "0.100000000001",
                       inputTokens=1000, outputTokens=200, requests=3),
            allocation("llama-2-7b/ads/__unallocated__/__unallocated__/ml-prod", *HOUR,
                       "0.000000000007", inputTokens=3, outputTokens=4, requests=1),
        ),
        one_set(allocation("gpt-4/search/rag/web/ml-prod", *NEXT_HOUR, "7.333333333333",
                           inputTokens=5, outputTokens=5, requests=1)),
    ]
    rows = list(focus_rows(sets))
    billed = sum((row["BilledCost"] for row in rows), Decimal(0))
    assert billed == Decimal("7.433333333341")  # 0.100000000001 + 0.000000000007 + 7.3...3
    for row in rows:  # no list, effective or discount served: all four costs are the total
        assert row["ListCost"] == row["EffectiveCost"] == row["ContractedCost"] \
            == row["BilledCost"]
    # Summed as the CSV writes them: decimal strings, not floats.
    cells = [csv_cells(row) for row in rows]
    at = COLUMNS.index("BilledCost")
    assert sum(Decimal(c[at]) for c in cells) == Decimal("7.433333333341")


def test_hours_across_a_month_boundary_get_their_own_billing_period() -> None:
    sets = [one_set(allocation("gpt-4/a/b/c/d", *HOUR, "1.0", requests=1)),
            one_set(allocation("gpt-4/a/b/c/d", *NEXT_HOUR, "2.0", requests=1)),
            one_set(allocation("gpt-4/a/b/c/d", "2023-12-31T23:00:00Z",
                               "2024-01-01T00:00:00Z", "3.0", requests=1))]
    periods = [(r["ChargePeriodStart"], r["BillingPeriodStart"], r["BillingPeriodEnd"])
               for r in focus_rows(sets)]
    assert periods == [
        (datetime(2024, 1, 31, 23, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC),
         datetime(2024, 2, 1, tzinfo=UTC)),
        (datetime(2024, 2, 1, 0, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC),
         datetime(2024, 3, 1, tzinfo=UTC)),
        (datetime(2023, 12, 31, 23, tzinfo=UTC), datetime(2023, 12, 1, tzinfo=UTC),
         datetime(2024, 1, 1, tzinfo=UTC)),
    ]
    assert {r["InvoiceId"] for r in focus_rows(sets)} == {None}  # costflux issues no invoice
    cells = csv_cells(next(iter(focus_rows(sets[1:2]))))
    assert cells[COLUMNS.index("BillingPeriodStart")] == "2024-02-01T00:00:00Z"
    assert cells[COLUMNS.index("BillingPeriodEnd")] == "2024-03-01T00:00:00Z"
    assert cells[COLUMNS.index("ChargePeriodEnd")] == "2024-02-01T01:00:00Z"


def test_labels_become_tags_and_the_model_x_model() -> None:
    row = next(iter(focus_rows([one_set(allocation(f"gpt-4/search/{NONE}/web/ml-prod", *HOUR,
                                                   "1.0", requests=1))])))
    assert json.loads(str(row["Tags"])) == {"team": "search", "app": "web",
                                            "namespace": "ml-prod"}
    assert (row["x_Model"], row["ResourceId"], row["SkuId"]) == ("gpt-4", "gpt-4", "gpt-4")
    assert (row["ChargeCategory"], row["ServiceCategory"], row["BillingCurrency"]) == (
        "Usage", "AI and Machine Learning", "USD")


def test_new_fields_are_used_token_and_gpu_parts_add_up() -> None:
    """With tokenCostExact the GPU part is a row of its own, split over GPU types by the GPU
    report; list and effective cost keep the discount on the token row."""
    user_a = allocation(
        "llama-2-70b/search/rag/web/ml-prod", *HOUR, "10.000000000000",
        tokenCostExact="4.000000000000", gpuCost=6.0, listCostExact="11.000000000000",
        effectiveCostExact="10.000000000000", contractDiscountExact="1.000000000000",
        inputTokens=3000, outputTokens=1000, cacheWriteInputTokens=100,
        cacheWrite1hInputTokens=50, reasoningTokens=70, requests=4, batchRequests=1,
        textTokenCostExact="4.900000000000", webSearchCostExact="0.100000000000",
        webSearchCalls=2)
    user_b = allocation("llama-2-70b/ads/rag/web/ml-prod", *HOUR, "2.000000000001",
                        tokenCostExact="0.000000000000", gpuCost=2.000000000001)
    idle = allocation("__idle__", *HOUR, "1.000000000000", idleCost=1.0)
    report = gpu_use({
        "llama-2-70b/nvidia-a100-80gb/on_demand": {"gpuHours": 2.0, "idleHours": 0.5,
                                                   "totalCost": 7.0, "idleCost": 1.0},
        "llama-2-70b/nvidia-l4/spot": {"gpuHours": 4.0, "idleHours": 0.0,
                                       "totalCost": 2.000000000001, "idleCost": 0.0},
    })
    rows = list(focus_rows([one_set(user_a, user_b, idle)], gpu={HOUR[0]: report}))
    by_kind = defaultdict(list)
    for row in rows:
        by_kind[row["x_CostComponent"]].append(row)
    token = by_kind["tokens"]
    assert len(token) == 1  # user_b used no tokens: GPU rows only
    assert (token[0]["BilledCost"], token[0]["EffectiveCost"], token[0]["ListCost"]) == (
        Decimal("4.000000000000"), Decimal("4.000000000000"), Decimal("5.000000000000"))
    assert token[0]["x_ContractDiscount"] == Decimal("1.000000000000")
    assert (token[0]["x_CacheWriteInputTokens"], token[0]["x_CacheWrite1hInputTokens"],
            token[0]["x_ReasoningTokens"], token[0]["x_BatchRequests"],
            token[0]["x_WebSearchCalls"], token[0]["x_WebSearchCost"]) == (
        150, 50, 70, 1, 2, Decimal("0.100000000000"))
    # The kinds' costs are at list prices: together the token row's list cost.
    assert sum(token[0][c] for c in ("x_TextTokenCost", "x_CacheWriteCost", "x_ReasoningCost",
                                     "x_AudioCost", "x_ImageCost", "x_WebSearchCost")) \
        == token[0]["ListCost"]
    gpu = by_kind["gpu"]
    assert {(r["SkuId"], r["PricingCategory"]) for r in gpu} == {
        ("nvidia-a100-80gb", "Standard"), ("nvidia-l4", "Dynamic")}
    assert sum(r["BilledCost"] for r in gpu) == Decimal("8.000000000001")
    # Hours: each user gets its share (6 : 2.000000000001) of the busy hours (1.5 + 4).
    hours = sum(r["x_GpuHours"] for r in gpu)
    assert abs(hours - Decimal("5.5")) < Decimal("1e-8")
    idle_rows = by_kind["gpu_idle"]
    assert [(r["x_Model"], r["BilledCost"], r["x_GpuHours"]) for r in idle_rows] == [
        ("__idle__", Decimal("1.000000000000"), Decimal("0.500000000"))]
    assert sum(r["BilledCost"] for r in rows) == Decimal("13.000000000001")
    assert sum(r["ListCost"] for r in rows) == Decimal("14.000000000001")


def test_an_older_worker_keeps_token_and_gpu_cost_in_one_row() -> None:
    row = allocation("llama-2-70b/search/rag/web/ml-prod", *HOUR, "10.000000000000",
                     tokenCost=4.0, gpuCost=6.0, inputTokens=10, requests=1)
    rows = list(focus_rows([one_set(row)]))
    assert [(r["x_CostComponent"], r["BilledCost"]) for r in rows] == [
        ("tokens+gpu", Decimal("10.000000000000"))]


def test_other_costs_are_rows_of_their_own() -> None:
    row = allocation("gpt-4/search/rag/web/ml-prod", *HOUR, "1.000000000000", requests=1,
                     otherCostsExact={"storage": "0.250000000000", "network": "0.000000000000",
                                      "operations": "0.100000000001"})
    empty = allocation("__unallocated__", *HOUR, "0.000000000000",
                       otherCostsExact={"storage": "0.5", "operations": "0"})
    rows = list(focus_rows([one_set(row, empty)]))
    kinds = [(r["x_Model"], r["x_CostComponent"], r["ServiceCategory"], r["BilledCost"])
             for r in rows]
    assert kinds == [
        ("__unallocated__", "storage", "Storage", Decimal("0.5")),
        ("gpt-4", "tokens", "AI and Machine Learning", Decimal("1.000000000000")),
        ("gpt-4", "operations", "Other", Decimal("0.100000000001")),
        ("gpt-4", "storage", "Storage", Decimal("0.250000000000")),
    ]
    assert all(r["ChargeFrequency"] == "Recurring" for r in rows if r["x_CostComponent"]
               not in ("tokens",))


def test_a_model_named_with_slashes_is_read_from_the_known_values() -> None:
    known = {"model": frozenset({"openai/gpt-4o", "gpt-4"}), "team": frozenset({"a/b", "c"}),
             "project": frozenset({NONE}), "app": frozenset({NONE}),
             "namespace": frozenset({"ml"})}
    assert split_group_name(f"openai/gpt-4o/c/{NONE}/{NONE}/ml", known) == (
        "openai/gpt-4o", "c", NONE, NONE, "ml")
    assert split_group_name(f"gpt-4/a/b/{NONE}/{NONE}/ml", known) == (
        "gpt-4", "a/b", NONE, NONE, "ml")
    with pytest.raises(FocusError, match="ways to read it"):
        split_group_name("x/y/z/w/v/u", known)
    with pytest.raises(FocusError, match="cannot tell"):
        split_group_name("gpt-4/a/b")


def test_csv_cells_keep_decimals_decimal_and_nulls_empty() -> None:
    row = next(iter(focus_rows([one_set(allocation("m/t/p/a/n", *HOUR, "0.000000000000",
                                                   requests=1))])))
    cells = dict(zip(COLUMNS, csv_cells(row), strict=True))
    assert cells["BilledCost"] == "0.000000000000"
    assert cells["ConsumedQuantity"] == "0.0"  # an integer alone would be read as int
    assert cells["PricingQuantity"] == "0.0"
    assert cells["AvailabilityZone"] == "" and cells["ListUnitPrice"] == ""
    assert cells["x_Requests"] == "1"
    out = io.StringIO()
    csv.writer(out).writerow(csv_cells(row))
    assert next(csv.reader(io.StringIO(out.getvalue()))) == csv_cells(row)


def test_bad_rows_say_which_and_what() -> None:
    with pytest.raises(FocusError, match="totalCostExact"):
        list(focus_rows([one_set({"name": "m/t/p/a/n", "start": HOUR[0], "end": HOUR[1]})]))
    with pytest.raises(FocusError, match="not RFC 3339"):
        list(focus_rows([one_set(allocation("m/t/p/a/n", "yesterday", HOUR[1], "1"))]))


money = st.integers(min_value=0, max_value=10**16)  # pico-dollars, up to $10,000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["gpt-4", "llama-2-70b", "o/m"]),
                          st.sampled_from(["a", "b"]), money, money,
                          st.integers(0, 3)), min_size=1, max_size=12),
       st.lists(st.tuples(st.sampled_from(["t4", "l4"]), st.sampled_from(["spot", "on_demand"]),
                          st.floats(0, 100), st.floats(0, 1000)), max_size=4),
       money)
def test_every_pico_dollar_lands_in_exactly_one_row(
    users: list[tuple[str, str, int, int, int]],
    pools: list[tuple[str, str, float, float]],
    idle_pico: int,
) -> None:
    """Whatever the GPU report says, the rows of each model add up to its allocation rows."""
    known = {"model": frozenset({"gpt-4", "llama-2-70b", "o/m"}), "team": frozenset("ab"),
             "project": frozenset({NONE}), "app": frozenset({NONE}),
             "namespace": frozenset({NONE})}
    rows, want = [], defaultdict(Decimal)
    for model, team, token, gpu, requests in users:
        name = f"{model}/{team}/{NONE}/{NONE}/{NONE}"
        if any(r["name"] == name for r in rows):
            continue
        total = Decimal(token + gpu) / 10**12
        rows.append(allocation(name, *HOUR, f"{total:f}",
                               tokenCostExact=f"{Decimal(token) / 10**12:f}",
                               gpuCost=gpu / 10**12, requests=requests, inputTokens=requests))
        want[model] += total
    rows.append(allocation("__idle__", *HOUR, f"{Decimal(idle_pico) / 10**12:f}",
                           idleCost=idle_pico / 10**12))
    want["__idle__"] += Decimal(idle_pico) / 10**12
    report = gpu_use({f"{model}/{gpu_type}/{tier}": {"gpuHours": hours, "idleHours": 0.0,
                                                     "totalCost": cost, "idleCost": 0.0}
                      for model in ("gpt-4", "o/m")
                      for gpu_type, tier, hours, cost in pools})
    got = defaultdict(Decimal)
    for row in focus_rows([one_set(*rows)], gpu={HOUR[0]: report}, known=known):
        billed = row["BilledCost"]
        assert isinstance(billed, Decimal) and billed >= 0
        got[str(row["x_Model"])] += billed
    assert {m: v for m, v in got.items() if v} == {m: v for m, v in want.items() if v}


def test_long_windows_are_read_in_parts_the_api_answers() -> None:
    """The API answers at most 1,000 steps a query: 62 days of hours come in aligned parts."""
    from datetime import timedelta

    from costflux.cli.export import _parts

    start, end = datetime(2024, 1, 1, 0, 30, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC)
    parts = list(_parts((start, end), timedelta(hours=1)))
    assert parts[0][0] == start and parts[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))  # no gap, no overlap
    assert all(stop - begin <= timedelta(hours=744) for begin, stop in parts)
    assert all(stop.minute == 0 for _, stop in parts[:-1])  # cut on whole hours
    assert len(list(_parts((start, end), timedelta(days=1)))) == 1

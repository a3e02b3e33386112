"""Reports rendered from allocation sets: figures and shares written out by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from costflux.core.report import PeakHours, by_time_of_day, render, report_rows

SET = {
    "search": {"name": "search", "totalCostExact": "30.000000000001", "requests": 3},
    "ads": {"name": "ads", "totalCostExact": "10.5", "requests": 1},
    "chat": {"name": "chat", "totalCostExact": "59.499999999999", "requests": 6},
}


def test_rows_are_exact_sorted_by_cost_and_shares_sum_to_one() -> None:
    rows = report_rows(SET.values())
    assert [(r.name, str(r.cost), r.requests) for r in rows] == [
        ("chat", "59.499999999999", 6), ("search", "30.000000000001", 3), ("ads", "10.5", 1)]
    assert sum(r.share for r in rows) == 1


def test_the_seeds_markdown_report() -> None:
    text = render(report_rows(SET.values()), "team", "markdown", "30d")
    assert text.splitlines() == [
        "| Team | Cost | Percentage |", "|---|---|---|",
        "| chat | $59.50 | 59.5% |", "| search | $30.00 | 30.0% |", "| ads | $10.50 | 10.5% |",
        "| Total | $100.00 | 100.0% |"]


def test_json_and_csv_keep_every_digit() -> None:
    rows = report_rows(SET.values())
    document = json.loads(render(rows, "team", "json", "30d"))
    assert document["total"] == "100.000000000000"
    assert document["rows"][1] == {"team": "search", "cost": "30.000000000001", "requests": 3,
                                   "percentage": "30.0"}
    assert render(rows, "team", "csv", "30d").splitlines()[1] == "chat,59.499999999999,6,59.5"


def test_time_of_day_splits_hourly_sets_by_local_peak_hours() -> None:
    def hourly(hour: int, cost: str) -> dict[str, dict[str, object]]:
        start = datetime(2026, 11, 23, hour, tzinfo=UTC).isoformat().replace("+00:00", "Z")
        return {"gpt-4": {"name": "gpt-4", "start": start, "totalCostExact": cost,
                          "requests": 1}}

    # Berlin is UTC+1 in November: 08:00 UTC is 09:00 local (peak), 17:00 UTC is 18:00 (off).
    sets = [hourly(7, "1"), hourly(8, "2"), hourly(16, "4"), hourly(17, "8")]
    rows = by_time_of_day(sets, PeakHours.parse("9-18", "Europe/Berlin"))
    assert [(r.name, str(r.cost)) for r in rows] == [("off-peak", "9"), ("peak", "6")]


@pytest.mark.parametrize("text", ["18-9", "9", "x-y", "0-25"])
def test_bad_peak_hours_say_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="peak hours"):
        PeakHours.parse(text)


def test_other_costs_are_an_extra_column_and_a_line_apart_from_usage_cost() -> None:
    others = {"search": {"storage": "15", "network": "0.000000000001"},
              "ads": {"storage": "5", "network": "2"},
              "chat": {"storage": "30", "network": "3"}}
    rows = report_rows({**a, "otherCostsExact": others[str(a["name"])]} for a in SET.values())
    assert render(rows, "team", "markdown", "30d").splitlines() == [
        "| Team | Cost | Percentage | Other |", "|---|---|---|---|",
        "| chat | $59.50 | 59.5% | $33.00 |", "| search | $30.00 | 30.0% | $15.00 |",
        "| ads | $10.50 | 10.5% | $7.00 |", "| Total | $100.00 | 100.0% | $55.00 |", "",
        "Other costs (not in Cost or Percentage): storage $50.00, network $5.00; "
        "total with other costs $155.00"]
    document = json.loads(render(rows, "team", "json", "30d"))
    assert document["total"] == "100.000000000000"  # usage cost, as without other costs
    assert document["otherCosts"] == {"storage": "50", "network": "5.000000000001"}
    assert document["otherTotal"] == "55.000000000001"
    assert document["totalWithOther"] == "155.000000000001"
    assert document["rows"][1]["other"] == "15.000000000001"
    assert render(rows, "team", "csv", "30d").splitlines()[:2] == [
        "team,cost,requests,percentage,other,other_storage,other_network",
        "chat,59.499999999999,6,59.5,33,30,3"]
    table = render(rows, "team", "table", "30d").splitlines()
    assert table[1].split() == ["Team", "Cost", "Percentage", "Other"]
    assert table[-2].split() == ["Total", "$100.00", "100.0%", "$55.00"]

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

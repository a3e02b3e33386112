"""Cost reports: the seed's monthly report (Team | Cost | Percentage) by any dimension, and
time of day (peak / off-peak), rendered as a table, markdown, CSV or JSON.

Figures are exact decimals (the allocation API's ``totalCostExact``); percentages are
rounded half-even to 0.1 % only when shown.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

__all__ = ["FORMATS", "PeakHours", "ReportRow", "by_time_of_day", "render", "report_rows"]

FORMATS = ("table", "markdown", "csv", "json")
_TENTH = Decimal("0.1")
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class ReportRow:
    name: str
    cost: Decimal  # exact dollars
    requests: int
    share: Decimal  # of the report's total, 0..1 exactly (as far as Decimal's 28 digits go)


@dataclass(frozen=True, slots=True)
class PeakHours:
    """Peak is [start_hour, end_hour) local time on every day (e.g. 9-18)."""

    start_hour: int
    end_hour: int
    timezone: str = "UTC"

    @classmethod
    def parse(cls, text: str, timezone: str = "UTC") -> PeakHours:
        """'9-18' -> PeakHours(9, 18); the error says the expected form."""
        start, _, end = text.partition("-")
        try:
            hours = cls(int(start), int(end), timezone)
        except ValueError:
            raise ValueError(f"peak hours {text!r}: expected START-END hours, e.g. 9-18") from None
        if not 0 <= hours.start_hour < hours.end_hour <= 24:
            raise ValueError(f"peak hours {text!r}: need 0 <= START < END <= 24")
        ZoneInfo(timezone)  # an unknown zone raises here, before any data is read
        return hours

    def is_peak(self, instant: datetime) -> bool:
        return self.start_hour <= instant.astimezone(ZoneInfo(self.timezone)).hour < self.end_hour


def report_rows(allocations: Iterable[Mapping[str, object]]) -> list[ReportRow]:
    """Rows of an allocation set (its values), most expensive first, with their share."""
    costs: dict[str, tuple[Decimal, int]] = {}
    for allocation in allocations:
        name = str(allocation["name"])
        cost, requests = costs.get(name, (Decimal(0), 0))
        costs[name] = (cost + Decimal(str(allocation["totalCostExact"])),
                       requests + int(str(allocation["requests"])))
    total = sum((cost for cost, _ in costs.values()), Decimal(0))
    rows = [ReportRow(name, cost, requests, cost / total if total else Decimal(0))
            for name, (cost, requests) in costs.items()]
    return sorted(rows, key=lambda row: (-row.cost, row.name))


def by_time_of_day(
    hourly_sets: Iterable[Mapping[str, Mapping[str, object]]], peak: PeakHours
) -> list[ReportRow]:
    """Peak / off-peak rows from one allocation set per hour (``step=1h``)."""
    relabelled = []
    for hourly in hourly_sets:
        for allocation in hourly.values():
            start = datetime.fromisoformat(str(allocation["start"]).replace("Z", "+00:00"))
            name = "peak" if peak.is_peak(start) else "off-peak"
            relabelled.append({**allocation, "name": name})
    return report_rows(relabelled)


def render(rows: list[ReportRow], dimension: str, form: str, window: str) -> str:
    """The report as text in ``form`` (one of FORMATS); ``dimension`` names the first column."""
    title = dimension.replace("_", " ").title()
    total = sum((row.cost for row in rows), Decimal(0))
    if form == "json":
        return json.dumps({
            "window": window, "by": dimension, "total": str(total),
            "rows": [{dimension: r.name, "cost": str(r.cost), "requests": r.requests,
                      "percentage": str(_percent(r.share))} for r in rows],
        }, indent=2)
    if form == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([dimension, "cost", "requests", "percentage"])
        for r in rows:
            writer.writerow([r.name, str(r.cost), r.requests, str(_percent(r.share))])
        return out.getvalue()
    cells = [(r.name, f"${_dollars(r.cost)}", f"{_percent(r.share)}%") for r in rows]
    cells.append(("Total", f"${_dollars(total)}", "100.0%" if rows else "0.0%"))
    header = (title, "Cost", "Percentage")
    if form == "markdown":  # the seed's report.to_markdown()
        lines = [f"| {' | '.join(header)} |", "|" + "---|" * 3]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in cells]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(3)]
    lines = [f"{title} cost, {window}"]
    for row in [header, *cells]:
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}")
    return "\n".join(lines) + "\n"


def _percent(share: Decimal) -> Decimal:
    return (share * 100).quantize(_TENTH, rounding=ROUND_HALF_EVEN)


def _dollars(cost: Decimal) -> str:
    return f"{cost.quantize(_CENT, rounding=ROUND_HALF_EVEN):,}"

"""Cost reports: the seed's monthly report (Team | Cost | Percentage) by any dimension, and
time of day (peak / off-peak), rendered as a table, markdown, CSV or JSON.

Figures are exact decimals (the allocation API's ``totalCostExact``); percentages are
rounded half-even to 0.1 % only when shown. Other costs (``other_costs`` in pricing.yaml:
storage, network, operations), when the API serves them, are an extra Other column and a
line per component, apart from Cost and Percentage (which stay usage cost).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

__all__ = ["FORMATS", "PeakHours", "ReportRow", "by_time_of_day", "dollars", "percent", "render",
           "report_rows", "table_lines"]

FORMATS = ("table", "markdown", "csv", "json")
_TENTH = Decimal("0.1")
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class ReportRow:
    name: str
    cost: Decimal  # exact dollars
    requests: int
    share: Decimal  # of the report's total, 0..1 exactly (as far as Decimal's 28 digits go)
    #: Exact dollars of each other cost component; None when the API served none.
    other: Mapping[str, Decimal] | None = None

    @property
    def other_total(self) -> Decimal:
        return _sum((self.other or {}).values())


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
    others: dict[str, dict[str, Decimal]] = {}
    for allocation in allocations:
        name = str(allocation["name"])
        cost, requests = costs.get(name, (Decimal(0), 0))
        costs[name] = (cost + Decimal(str(allocation["totalCostExact"])),
                       requests + int(str(allocation["requests"])))
        components = allocation.get("otherCostsExact")
        if isinstance(components, Mapping):
            other = others.setdefault(name, {})
            for component, amount in components.items():
                other[component] = other.get(component, Decimal(0)) + Decimal(str(amount))
    total = sum((cost for cost, _ in costs.values()), Decimal(0))
    rows = [ReportRow(name, cost, requests, cost / total if total else Decimal(0),
                      others.get(name, {}) if others else None)
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
    """The report as text in ``form`` (one of FORMATS); ``dimension`` names the first column.

    With other costs, an Other column (and in JSON ``other``, ``otherCosts``, ``otherTotal``,
    ``totalWithOther``); without, the columns are the seed's.
    """
    title = dimension.replace("_", " ").title()
    total = sum((row.cost for row in rows), Decimal(0))
    others = _other_totals(rows)
    if form == "json":
        return _json(rows, dimension, window, total, others)
    if form == "csv":
        return _csv(rows, dimension, others)
    cells = [[r.name, f"${dollars(r.cost)}", f"{percent(r.share)}%"] for r in rows]
    cells.append(["Total", f"${dollars(total)}", "100.0%" if rows else "0.0%"])
    header = [title, "Cost", "Percentage"]
    footer = []
    if others is not None:
        header.append("Other")
        other_cells = [*(r.other_total for r in rows), _sum(others.values())]
        for cell, other in zip(cells, other_cells, strict=True):
            cell.append(f"${dollars(other)}")
        footer = [_other_line(total, others)]
    if form == "markdown":  # the seed's report.to_markdown()
        lines = table_lines(header, cells, markdown=True)
        return "\n".join([*lines, *(["", *footer] if footer else [])]) + "\n"
    lines = [f"{title} cost, {window}", *table_lines(header, cells, markdown=False)]
    return "\n".join([*lines, *footer]) + "\n"


def table_lines(header: Sequence[str], cells: Sequence[Sequence[str]], markdown: bool) -> list[str]:
    """A markdown table, or a plain one: the first column left-aligned, the others right."""
    if markdown:
        return [f"| {' | '.join(header)} |", "|" + "---|" * len(header),
                *(f"| {' | '.join(cell)} |" for cell in cells)]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    return ["  ".join([f"{row[0]:<{widths[0]}}",
                       *(f"{c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True))])
            for row in [header, *cells]]


def _json(rows: list[ReportRow], dimension: str, window: str, total: Decimal,
          others: dict[str, Decimal] | None) -> str:
    document: dict[str, object] = {
        "window": window, "by": dimension, "total": str(total),
        "rows": [{dimension: r.name, "cost": str(r.cost), "requests": r.requests,
                  "percentage": str(percent(r.share)),
                  **({} if others is None else {
                      "other": str(r.other_total),
                      "otherCosts": {c: str(v) for c, v in (r.other or {}).items()}})}
                 for r in rows],
    }
    if others is not None:
        other_total = _sum(others.values())
        document.update({"otherTotal": str(other_total),
                         "otherCosts": {c: str(v) for c, v in others.items()},
                         "totalWithOther": str(total + other_total)})
    return json.dumps(document, indent=2)


def _csv(rows: list[ReportRow], dimension: str, others: dict[str, Decimal] | None) -> str:
    components = list(others or {})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = [] if others is None else ["other", *(f"other_{c}" for c in components)]
    writer.writerow([dimension, "cost", "requests", "percentage", *extra])
    for r in rows:
        values = [] if others is None else [
            str(r.other_total), *(str((r.other or {}).get(c, Decimal(0))) for c in components)]
        writer.writerow([r.name, str(r.cost), r.requests, str(percent(r.share)), *values])
    return out.getvalue()


def _other_totals(rows: list[ReportRow]) -> dict[str, Decimal] | None:
    """Each other cost component summed over the rows, in first-seen order; None if none."""
    if all(row.other is None for row in rows):
        return None
    totals: dict[str, Decimal] = {}
    for row in rows:
        for component, amount in (row.other or {}).items():
            totals[component] = totals.get(component, Decimal(0)) + amount
    return totals


def _other_line(usage: Decimal, others: dict[str, Decimal]) -> str:
    parts = ", ".join(f"{component} ${dollars(amount)}" for component, amount in others.items())
    with_other = usage + _sum(others.values())
    return (f"Other costs (not in Cost or Percentage): {parts or 'none'}; "
            f"total with other costs ${dollars(with_other)}")


def _sum(amounts: Iterable[Decimal]) -> Decimal:
    return sum(amounts, Decimal(0))


def percent(share: Decimal) -> Decimal:
    """A share (0..1) as a percentage, half to even at 0.1 %."""
    return (share * 100).quantize(_TENTH, rounding=ROUND_HALF_EVEN)


def dollars(cost: Decimal) -> str:
    """Dollars to the cent, half to even, with thousands separators (no $ sign)."""
    return f"{cost.quantize(_CENT, rounding=ROUND_HALF_EVEN):,}"

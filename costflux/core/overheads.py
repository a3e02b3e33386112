"""Other cost components: storage, network, operations — configured monthly amounts, prorated to
a query's window and shared among its allocation groups, shown apart from usage cost.

The seeds' cost-composition tables put GPU compute at 60-80 % of LLM inference cost, storage
at 10-20 %, network at 5-10 %, operations (people) at 5-10 % and other (logs, monitoring) at
5 %. Usage events and GPU samples measure only the first, so the rest is configured as
monthly amounts (``other_costs`` in pricing.yaml, parsed into ``OtherCost``) and allocated
here.

**Proration**, exact in integer pico-dollars: in a UTC calendar month starting at ``M`` and
``L`` ms long, a component accrues ``N(t) = sum(monthly_pico x ms of [M, t) it was in force)``,
and a span ``[s, e)`` inside that month is charged ``floor(N(e) / L) - floor(N(s) / L)``; a
span crossing months is charged its part in each. Rounding down the month's running total
(not each span) makes the charges additive: a whole month is exactly its monthly amount (when
no change of amount falls inside it), and a window cut into steps is charged exactly what the
whole window is.

**Sharing**: among the window's groups (the ``__idle__`` row is GPU waste, not a consumer, and
takes none) by ``allocate_by`` — their usage cost (token + GPU), requests, tokens, or evenly —
with ``split_in_proportion``, so the parts sum exactly to the amount (all-zero weights share
evenly). A window with no usage at all charges everything to ``__unallocated__``.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from costflux.core.allocation import IDLE, UNALLOCATED, TimeRange, empty_allocation
from costflux.core.gpu import split_in_proportion
from costflux.core.money import (
    PICO_PER_DOLLAR,
    exact_pico,
    pico_to_dollars,
    pico_to_exact_string,
)
from costflux.core.pricing import OtherCost

__all__ = ["month_bounds", "other_cost_amount", "with_other_costs"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def month_bounds(span: TimeRange) -> Iterator[tuple[int, int]]:
    """(start_ms, end_ms) of each UTC calendar month that ``span`` overlaps, in order.

    >>> list(month_bounds(TimeRange(1_706_745_600_000, 1_706_832_000_000)))  # 2024-02-01
    [(1706745600000, 1709251200000)]
    """
    moment = _EPOCH + timedelta(milliseconds=span.start_ms)
    year, month = moment.year, moment.month
    begin = _month_start_ms(year, month)
    while begin < span.end_ms:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        end = _month_start_ms(year, month)
        yield begin, end
        begin = end


def _month_start_ms(year: int, month: int) -> int:
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def other_cost_amount(cost: OtherCost, span: TimeRange) -> int:
    """The component's charge for ``span`` in pico-dollars, prorated by UTC calendar month.

    >>> march = TimeRange(1_709_251_200_000, 1_709_251_200_000 + 86_400_000)  # 2024-03-01
    >>> other_cost_amount(OtherCost(((0, 3_100_000_000_000_000),)), march)  # $3,100 / 31 days
    100000000000000
    """
    amount = 0
    for begin, end in month_bounds(span):
        length = end - begin
        amount += (_accrued(cost, begin, min(span.end_ms, end)) // length
                   - _accrued(cost, begin, max(span.start_ms, begin)) // length)
    return amount


def _accrued(cost: OtherCost, month_start: int, until: int) -> int:
    """``N(until)``: pico-dollars x ms accrued since ``month_start`` at the amounts in force."""
    total = 0
    for index, (begins, monthly) in enumerate(cost.monthly):
        ends = cost.monthly[index + 1][0] if index + 1 < len(cost.monthly) else until
        overlap = min(until, ends) - max(month_start, begins)
        if overlap > 0:
            total += monthly * overlap
    return total


def _row_int(row: Mapping[str, object], key: str) -> int:
    return int(str(row[key]))


_WEIGHT: dict[str, Callable[[Mapping[str, object]], int]] = {
    "cost": lambda row: exact_pico(Decimal(str(row["totalCostExact"]))),
    "requests": lambda row: _row_int(row, "requests"),
    "tokens": lambda row: _row_int(row, "inputTokens") + _row_int(row, "outputTokens"),
    "even": lambda row: 1,
}


def with_other_costs(
    rows: Mapping[str, Mapping[str, object]],
    span: TimeRange,
    components: Mapping[str, OtherCost],
) -> dict[str, dict[str, object]]:
    """``allocate``'s rows for ``span`` with each component's share added, apart from usage.

    Added to every row: ``otherCost`` ($), ``otherCostExact`` (exact decimal), ``otherCosts``
    and ``otherCostsExact`` (per component) and ``totalCostWithOther`` ($); ``totalCost``
    stays the usage cost. With no components the rows are returned unchanged.
    """
    answer = {name: dict(row) for name, row in rows.items()}
    if not components:
        return answer
    recipients = sorted(name for name in answer if name != IDLE)
    if not recipients:
        answer[UNALLOCATED] = empty_allocation(UNALLOCATED, span)
        recipients = [UNALLOCATED]
    parts: dict[str, dict[str, int]] = {name: dict.fromkeys(components, 0) for name in answer}
    for component, cost in components.items():
        weigh = _WEIGHT[cost.allocate_by]
        shares = split_in_proportion(
            other_cost_amount(cost, span), [weigh(answer[name]) for name in recipients]
        )
        for name, share in zip(recipients, shares, strict=True):
            parts[name][component] = share
    return {name: _with_parts(answer[name], parts[name]) for name in sorted(answer)}


def _with_parts(row: dict[str, object], parts: dict[str, int]) -> dict[str, object]:
    other = sum(parts.values())
    usage = Decimal(str(row["totalCostExact"]))
    row.update({
        "otherCost": pico_to_dollars(other),
        "otherCostExact": pico_to_exact_string(other),
        "otherCosts": {component: pico_to_dollars(part) for component, part in parts.items()},
        "otherCostsExact": {
            component: pico_to_exact_string(part) for component, part in parts.items()
        },
        "totalCostWithOther": float(usage + Decimal(other) / PICO_PER_DOLLAR),
    })
    return row

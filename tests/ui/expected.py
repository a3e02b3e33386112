"""What the console must show, computed here from the API's answers, independently of its
JavaScript: money to the cent from a dollar up and to three significant digits below
(half to even), percentages to a tenth, counts with thousands separators."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

__all__ = ["count", "money", "percent", "projected", "ms"]


def money(value: Decimal | str | float | int) -> str:
    amount = value if isinstance(value, Decimal) else Decimal(
        format(value, ".12f") if isinstance(value, float) else str(value))
    amount = amount.quantize(Decimal("1e-12"), ROUND_HALF_EVEN)  # the API's pico-dollar
    size = abs(amount)
    decimals = _decimals(size)
    # rounded up across a power of ten ($0.09996 -> $0.1000): one digit fewer
    decimals = min(decimals, _decimals(size.quantize(Decimal(1).scaleb(-decimals),
                                                     ROUND_HALF_EVEN)))
    shown = size.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_EVEN)
    return f"{'-' if amount < 0 else ''}${shown:,.{decimals}f}"


def _decimals(size: Decimal) -> int:
    if size >= 1 or size == 0:
        return 2
    return min(12, max(2, -size.adjusted() + 2))  # three significant digits


def percent(part: Decimal, whole: Decimal) -> str:
    if whole == 0:
        return "–"
    return f"{(part * 100 / whole).quantize(Decimal('0.1'), ROUND_HALF_EVEN)} %"


def count(n: int) -> str:
    return f"{n:,}"


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def projected(total: Decimal, start_ms: int, end_ms: int, period_end_ms: int) -> Decimal:
    """Spend / elapsed × the period's length, to the pico-dollar (half to even)."""
    value = total * (period_end_ms - start_ms) / (end_ms - start_ms)
    return value.quantize(Decimal("1e-12"), ROUND_HALF_EVEN)


def exact_sum(rows: Any, field: str = "totalCostExact") -> Decimal:
    return sum((Decimal(str(row[field])) for row in rows), Decimal(0))

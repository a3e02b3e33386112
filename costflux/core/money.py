"""Exact money: integer pico-dollars in every aggregate, floats only at presentation edges."""

from __future__ import annotations

from decimal import Context, Decimal, InvalidOperation

from costflux.core.errors import InputError

#: One US dollar in the internal unit. Per-token prices down to $1e-12 stay integers, so sums
#: are exact and independent of order and grouping.
PICO_PER_DOLLAR = 10**12


_EXACT = Context(prec=200)


class MoneyError(InputError):
    """A price cannot be represented exactly in pico-dollars."""


def to_decimal(value: object) -> Decimal:
    """Read a price as written: floats via their shortest repr, so 0.0008 stays 0.0008."""
    if isinstance(value, bool):
        raise MoneyError("a price must be a number, not a boolean")
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, int | str | Decimal):
        raise MoneyError(f"a price must be a number, got {type(value).__name__}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise MoneyError(f"{value!r} is not a number") from None
    if not result.is_finite():
        raise MoneyError(f"{value!r} is not a finite number")
    return result


def exact_pico(amount_dollars: Decimal) -> int:
    """Convert dollars to pico-dollars, refusing anything finer than one pico-dollar."""
    # Wide enough that no digit of a written price is rounded away before the check.
    pico = _EXACT.multiply(amount_dollars, Decimal(PICO_PER_DOLLAR))
    if pico != pico.to_integral_value():
        raise MoneyError(
            f"{amount_dollars} $ is finer than 1e-12 $; round the price to 12 decimal places"
        )
    return int(pico)


def pico_to_dollars(pico: int) -> float:
    """Presentation only: a float for metrics and JSON."""
    return pico / PICO_PER_DOLLAR


def pico_to_exact_string(pico: int) -> str:
    """Exact dollars as a decimal string with 12 places (for APIs that must not round)."""
    sign = "-" if pico < 0 else ""
    whole, frac = divmod(abs(pico), PICO_PER_DOLLAR)
    return f"{sign}{whole}.{frac:012d}"

"""Negotiated discounts: a percentage off the list price of a provider's models, or of one
model, over a span of time. Pure.

``pricing.yaml``::

    contracts:
      - provider: openai          # every model whose entry says provider: openai
        discount_pct: 10
        effective_from: 2025-01-01T00:00:00Z   # optional; open-ended without
        effective_until: 2026-01-01T00:00:00Z  # optional, exclusive
      - model: gpt-4o              # one model: wins over its provider's contract
        discount_pct: 15

The discount is taken per request, off its list cost, rounded half to even to the pico-dollar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, ClassVar, Self

from pydantic import model_validator

from costflux.core.config_files import PERCENT_SCHEMA, ConfigModel, Fix, Moment, percentage, refuse

__all__ = ["Contract", "ContractEntry", "contracts_from", "discount_at"]

_BEGINNING = -(2**62)
_END_OF_TIME = 2**62


@dataclass(frozen=True, slots=True)
class Contract:
    """``share`` of the list cost off, for ``model`` (or every model of ``provider``), for
    requests with an event time in [starts_ms, ends_ms)."""

    share: Fraction
    model: str = ""
    provider: str = ""
    starts_ms: int = _BEGINNING
    ends_ms: int = _END_OF_TIME


def discount_at(contracts: Sequence[Contract], model: str, provider: str, ts_ms: int
                ) -> Fraction | None:
    """The share a contract takes off ``model``'s list cost at ``ts_ms``: the model's own
    contract in force then, else its provider's; the first in the file when several are."""
    by_provider = None
    for contract in contracts:
        if not contract.starts_ms <= ts_ms < contract.ends_ms:
            continue
        if contract.model == model:
            return contract.share
        if by_provider is None and provider and contract.provider == provider:
            by_provider = contract.share
    return by_provider


class ContractEntry(ConfigModel):
    """A negotiated discount, for one ``model`` or every model of a ``provider``."""

    shape: ClassVar[str] = ("expected a list of {provider: <name> or model: <name>, "
                            "discount_pct: <percent>, effective_from?, effective_until?}")
    unknown: ClassVar[str] = ("unknown key; a contract has provider or model, discount_pct, "
                              "effective_from and effective_until")

    provider: str = ""
    model: str = ""
    discount_pct: Annotated[Decimal, percentage("12.5"), PERCENT_SCHEMA, Fix(
        "a price must be a number, got NoneType; write a percentage such as 12.5")]
    effective_from: Moment | None = None
    effective_until: Moment | None = None

    @model_validator(mode="after")
    def _one_and_in_order(self) -> Self:
        if bool(self.model) == bool(self.provider):
            raise refuse("name either model or provider (one of them)")
        if self.starts_ms >= self.ends_ms:
            raise refuse("must be after effective_from", "effective_until")
        return self

    @property
    def starts_ms(self) -> int:
        return _BEGINNING if self.effective_from is None else self.effective_from

    @property
    def ends_ms(self) -> int:
        return _END_OF_TIME if self.effective_until is None else self.effective_until


def contracts_from(entries: Sequence[ContractEntry], known_models: Mapping[str, str],
                   fail: Callable[[tuple[str | int, ...], str], Exception]
                   ) -> tuple[Contract, ...]:
    """The file's contracts; ``known_models`` maps each priced model to its provider, so a
    contract naming nothing priced is an error (a typo would otherwise bill at list price)."""
    for index, entry in enumerate(entries):
        if entry.model and entry.model not in known_models:
            raise fail(("contracts", index, "model"), f"{entry.model!r} is not in model_costs")
        if entry.provider and entry.provider not in known_models.values():
            raise fail(("contracts", index, "provider"),
                       f"no model in model_costs has provider: {entry.provider}")
    return tuple(Contract(Fraction(entry.discount_pct) / 100, entry.model, entry.provider,
                          entry.starts_ms, entry.ends_ms) for entry in entries)

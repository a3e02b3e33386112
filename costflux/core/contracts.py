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
from fractions import Fraction
from typing import Any

from costflux.core.money import MoneyError, to_decimal

__all__ = ["Contract", "discount_at", "parse_contracts"]

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


def parse_contracts(section: Any, parse_time: Callable[[Any, tuple[str | int, ...]], int],
                    known_models: Mapping[str, str], fail: Any) -> tuple[Contract, ...]:
    """The ``contracts`` list; ``known_models`` maps each priced model to its provider, so a
    contract naming nothing priced is an error (a typo would otherwise bill at list price)."""
    if not isinstance(section, list) or not all(isinstance(c, dict) for c in section):
        raise fail(("contracts",), "expected a list of {provider: <name> or model: <name>, "
                   "discount_pct: <percent>, effective_from?, effective_until?}")
    contracts = []
    for index, spec in enumerate(section):
        path: tuple[str | int, ...] = ("contracts", index)
        unknown = set(spec) - {"provider", "model", "discount_pct", "effective_from",
                               "effective_until"}
        if unknown:
            raise fail((*path, sorted(unknown)[0]), "unknown key; a contract has provider or "
                       "model, discount_pct, effective_from and effective_until")
        model, provider = spec.get("model", ""), spec.get("provider", "")
        if bool(model) == bool(provider):
            raise fail(path, "name either model or provider (one of them)")
        if model and model not in known_models:
            raise fail((*path, "model"), f"{model!r} is not in model_costs")
        if provider and provider not in known_models.values():
            raise fail((*path, "provider"), f"no model in model_costs has provider: {provider}")
        try:
            pct = to_decimal(spec.get("discount_pct"))
        except MoneyError as exc:
            raise fail((*path, "discount_pct"), f"{exc}; write a percentage such as 12.5") \
                from None
        if not 0 <= pct <= 100:
            raise fail((*path, "discount_pct"), "a discount is a percentage from 0 to 100")
        starts = (parse_time(spec["effective_from"], (*path, "effective_from"))
                  if "effective_from" in spec else _BEGINNING)
        ends = (parse_time(spec["effective_until"], (*path, "effective_until"))
                if "effective_until" in spec else _END_OF_TIME)
        if ends <= starts:
            raise fail((*path, "effective_until"), "must be after effective_from")
        contracts.append(Contract(Fraction(pct) / 100, str(model), str(provider), starts, ends))
    return tuple(contracts)

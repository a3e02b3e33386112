"""Budgets: their periods in local time, spend to date, the seed's projection and status.

The seed's BudgetManager: projected = spend / days elapsed x days in period; projected over
the budget is WARNING, over 1.1 x the budget CRITICAL, else OK (equality is OK). Here the
period is the budget's own (a 31-day month is 31 days, a DST day 23 or 25 hours), elapsed time
is event time, and the comparisons are exact integer cross-multiplications, so 50,000 is OK
and 50,000.000000000001 is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import yaml

from costflux.core.money import MoneyError, exact_pico, to_decimal
from costflux.core.named_entries import named_entries
from costflux.core.rows import DIMENSIONS

__all__ = [
    "COST_CENTER",
    "EACH",
    "PRINCIPAL_KEYS",
    "SCOPE_KEYS",
    "Budget",
    "BudgetError",
    "BudgetStatus",
    "budget_status",
    "parse_budgets_text",
]

Status = Literal["OK", "WARNING", "CRITICAL"]
Enforce = Literal["none", "soft", "hard"]
#: Who sent a request, as the gateway labels it: kept out of the windows' dimensions (there
#: may be hundreds of thousands) and counted apart (costflux.core.spend).
PRINCIPAL_KEYS = ("api_key", "end_user")
#: What a budget may be scoped by: the usage rows' dimensions, the principals, or a cost
#: center of the file.
SCOPE_KEYS = (*DIMENSIONS, *PRINCIPAL_KEYS)
COST_CENTER = "cost_center"
#: A principal scope's value meaning "each of them, apart": ``{end_user: "*"}`` gives every
#: end user a budget of the amount.
EACH = "*"
_DAY_MS = 86_400_000


class BudgetError(ValueError):
    """The budgets file is invalid; the message names the field and the fix."""


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    scope: Mapping[str, str]  # every key must match; {} is everything
    period: str  # monthly | weekly | daily | custom
    amount_pico: int
    thresholds: tuple[int, ...] = ()  # % of the amount, each alerted once per period
    reset_day: int = 1  # monthly: day of month (1-28); weekly: ISO weekday (1 = Monday)
    timezone: str = "UTC"
    custom_days: int = 0  # custom: the period's length in days ...
    custom_start: date | None = None  # ... counted from this local date
    project_after_ms: int = _DAY_MS  # before this much of a period, spend is the projection
    members: tuple[Mapping[str, str], ...] = ()  # scope.cost_center: any of these scopes
    enforce: Enforce = "none"  # what the gateway does once the spend reaches the amount
    #: What identifies the spend this budget measures: its scope and its periods, not its
    #: name or amount (renaming it or raising its amount keeps the spend counted so far).
    #: Computed once: the gateway asks for it on every request.
    counter_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        definition = orjson.dumps(
            [sorted(self.scope.items()), [sorted(m.items()) for m in self.members],
             self.period, self.reset_day, self.timezone, self.custom_days,
             self.custom_start.isoformat() if self.custom_start else None])
        object.__setattr__(self, "counter_id", hashlib.sha256(definition).hexdigest()[:16])

    def matches(self, dimensions: Mapping[str, str]) -> bool:
        return all(_value_matches(dimensions.get(key), value)
                   for key, value in self.scope.items() if key != COST_CENTER) and (
            not self.members
            or any(all(dimensions.get(k) == v for k, v in member.items())
                   for member in self.members))

    @property
    def per_principal(self) -> str | None:
        """The principal key scoped ``"*"`` (one budget per value of it), if any."""
        return next((key for key, value in self.scope.items() if value == EACH), None)

    @property
    def scopes_principals(self) -> bool:
        """Whether the scope names an API key or end user, which window rows do not hold:
        only the gateway's counters (costflux.core.spend) can measure such a budget."""
        return any(key in PRINCIPAL_KEYS for key in self.scope)

    def period_at(self, ts_ms: int) -> tuple[int, int]:
        """The [start, end) of the period holding ``ts_ms``, in epoch ms, from local midnights."""
        zone = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(ts_ms // 1000, zone).date()
        if self.period == "daily":
            start = local
            end = start + timedelta(days=1)
        elif self.period == "weekly":
            start = local - timedelta(days=(local.isoweekday() - self.reset_day) % 7)
            end = start + timedelta(days=7)
        elif self.period == "monthly":
            start = date(local.year, local.month, self.reset_day)
            if start > local:
                start = date(*_add_month(local.year, local.month, -1), self.reset_day)
            end = date(*_add_month(start.year, start.month, 1), self.reset_day)
        else:
            assert self.custom_start is not None
            periods = (local - self.custom_start).days // self.custom_days
            start = self.custom_start + timedelta(days=periods * self.custom_days)
            end = start + timedelta(days=self.custom_days)
        return _midnight_ms(start, zone), _midnight_ms(end, zone)


class BudgetStatus(NamedTuple):
    budget: Budget
    period_start_ms: int
    period_end_ms: int
    spend_pico: int | Fraction  # GPU cost is finer than a pico-dollar: kept exact
    projected_pico: int
    status: Status
    thresholds_reached: tuple[int, ...]
    projection_ratio: Fraction  # projected / amount, exactly (what the status compares)


def budget_status(budget: Budget, spend_pico: int | Fraction, now_ms: int) -> BudgetStatus:
    """Spend to date, projection and status of ``budget`` at event time ``now_ms``.

    Elapsed time is ``now_ms`` minus the period start; until ``project_after_ms`` of the period
    has passed, the projection is the spend itself (one early request must not project a
    month of overspend).
    """
    start, end = budget.period_at(now_ms)
    elapsed, length = min(now_ms, end) - start, end - start
    if elapsed < budget.project_after_ms:
        elapsed = length  # no extrapolation yet
    amount = budget.amount_pico
    # projected > amount  <=>  spend x length > amount x elapsed (no rounding anywhere)
    if 10 * spend_pico * length > 11 * amount * elapsed:
        status: Status = "CRITICAL"
    elif spend_pico * length > amount * elapsed:
        status = "WARNING"
    else:
        status = "OK"
    reached = tuple(p for p in budget.thresholds if spend_pico * 100 >= amount * p)
    return BudgetStatus(budget, start, end, spend_pico, int(spend_pico * length // elapsed),
                        status, reached, Fraction(spend_pico * length, elapsed * amount))


def _value_matches(actual: str | None, wanted: str) -> bool:
    return actual == wanted or (wanted == EACH and bool(actual))


def _add_month(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + months
    return index // 12, index % 12 + 1


def _midnight_ms(day: date, zone: ZoneInfo) -> int:
    local = datetime(day.year, day.month, day.day, tzinfo=zone)
    return int(local.astimezone(UTC).timestamp()) * 1000


# --- the budgets file ---------------------------------------------------------------------

_PERIODS = ("monthly", "weekly", "daily")
_FIELDS = ("name", "scope", "period", "amount", "thresholds", "reset_day", "timezone",
           "project_after_days", "enforce")
_ENFORCE = ("none", "soft", "hard")


def parse_budgets_text(text: str, source: str = "budgets.yaml") -> list[Budget]:
    """Parse ``budgets: [{name, scope, period, amount, thresholds, ...}]`` and the optional
    ``cost_centers: {name: [scope, ...]}`` that ``scope: {cost_center: name}`` refers to (a
    cost center is the teams, projects... it pays for: a usage row of any of them is its)."""
    entries = named_entries(text, source, "budgets", _FIELDS, BudgetError,
                            "name, scope, period and amount")
    centers = _cost_centers(yaml.safe_load(text).get(COST_CENTER + "s", {}), source)
    return [_budget(entry, where, centers) for where, entry in entries]


def _cost_centers(value: Any, source: str) -> dict[str, tuple[dict[str, str], ...]]:
    where = f"{source}: cost_centers"
    if not isinstance(value, dict):
        raise BudgetError(f"{where}: expected a mapping of name to a list of scopes, e.g. "
                          "{cc-4410: [{team: ml-research}, {project: rag}]}")
    centers = {}
    for name, members in value.items():
        if not isinstance(members, list) or not members:
            raise BudgetError(f"{where}.{name}: expected a non-empty list of scopes")
        centers[str(name)] = tuple(_scope(m, f"{where}.{name}", allow_center=False)
                                   for m in members)
    return centers


def _scope(scope: Any, where: str, allow_center: bool) -> dict[str, str]:
    if not isinstance(scope, dict) or not all(isinstance(v, str) for v in scope.values()):
        raise BudgetError(f"{where}: expected a mapping of label to value, e.g. "
                          "{team: ml-research}")
    allowed = (*SCOPE_KEYS, COST_CENTER) if allow_center else SCOPE_KEYS
    for key, value in scope.items():
        if key not in allowed:
            raise BudgetError(f"{where}.{key}: not a dimension costflux aggregates by; "
                              f"use {', '.join(allowed)}")
        if value == EACH and (key not in PRINCIPAL_KEYS or not allow_center):
            raise BudgetError(f"{where}.{key}: '*' (each value apart) is for "
                              f"{' and '.join(PRINCIPAL_KEYS)} only; name one {key}")
    if [value for value in scope.values()].count(EACH) > 1:
        raise BudgetError(f"{where}: '*' may stand for one key only, e.g. "
                          "{api_key: key-..., end_user: '*'}")
    return dict(scope)


def _budget(entry: dict[str, Any], where: str,
            centers: Mapping[str, tuple[dict[str, str], ...]]) -> Budget:
    scope = _scope(entry.get("scope", {}), f"{where}.scope", allow_center=True)
    members: tuple[dict[str, str], ...] = ()
    if COST_CENTER in scope:
        if scope[COST_CENTER] not in centers:
            raise BudgetError(f"{where}.scope.cost_center: {scope[COST_CENTER]!r} is not under "
                              "the file's top-level cost_centers: (name: [scopes])")
        members = centers[scope[COST_CENTER]]
    period, custom_days, custom_start = _period(entry.get("period"), f"{where}.period")
    try:
        amount = exact_pico(to_decimal(entry.get("amount")))
    except MoneyError as exc:
        raise BudgetError(f"{where}.amount: {exc}; write dollars, e.g. amount: 50000") from None
    if amount <= 0:
        raise BudgetError(f"{where}.amount: must be more than 0 dollars")
    thresholds = entry.get("thresholds", [])
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds
    ):
        raise BudgetError(f"{where}.thresholds: expected whole percentages, e.g. [50, 80, 100]")
    reset_day = entry.get("reset_day", 1)
    limit = 28 if period == "monthly" else 7
    if not isinstance(reset_day, int) or not 1 <= reset_day <= limit:
        raise BudgetError(f"{where}.reset_day: expected 1-{limit} for a {period} budget "
                          "(28 at most, so that every month has it)")
    timezone = entry.get("timezone", "UTC")
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        raise BudgetError(f"{where}.timezone: {timezone!r} is not an IANA time zone such as "
                          "Europe/Berlin") from None
    after = entry.get("project_after_days", 1)
    if not isinstance(after, int | float) or isinstance(after, bool) or after < 0:
        raise BudgetError(f"{where}.project_after_days: expected a number of days, e.g. 1")
    enforce = entry.get("enforce", "none")
    if enforce not in _ENFORCE:
        raise BudgetError(f"{where}.enforce: {enforce!r} is not none, soft or hard (hard: "
                          "the gateway refuses requests once the spend reaches the amount)")
    if enforce == "none" and any(key in PRINCIPAL_KEYS for key in scope):
        raise BudgetError(f"{where}.enforce: a budget scoped by {' or '.join(PRINCIPAL_KEYS)} "
                          "is measured by the gateway's counters only: set enforce: soft or "
                          "hard")
    return Budget(name=entry["name"], scope=scope, members=members, period=period,
                  enforce=enforce,
                  amount_pico=amount,
                  thresholds=tuple(sorted(set(thresholds))), reset_day=reset_day,
                  timezone=str(timezone), custom_days=custom_days, custom_start=custom_start,
                  project_after_ms=round(after * _DAY_MS))


def _period(value: Any, where: str) -> tuple[str, int, date | None]:
    if value in _PERIODS:
        return str(value), 0, None
    if isinstance(value, dict) and set(value) == {"days", "starting"}:
        days, starting = value["days"], value["starting"]
        if isinstance(days, int) and days > 0 and isinstance(starting, date):
            return "custom", days, starting
    raise BudgetError(f"{where}: {value!r} is not monthly, weekly, daily or "
                      "{days: N, starting: YYYY-MM-DD}")

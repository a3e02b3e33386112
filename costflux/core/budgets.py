"""Budgets: their periods in local time, spend to date, the seed's projection and status.

The seed's BudgetManager: projected = spend / days elapsed x days in period; projected over
the budget is WARNING, over 1.1 x the budget CRITICAL, else OK (equality is OK). Here the
period is the budget's own (a 31-day month is 31 days, a DST day 23 or 25 hours), elapsed time
is event time, and the comparisons are exact integer cross-multiplications, so 50,000 is OK
and 50,000.000000000001 is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from costflux.core.config_files import (
    ConfigModel,
    Fix,
    Name,
    NamedEntries,
    YamlText,
    check,
    named_entry_error,
    refuse,
)
from costflux.core.errors import ConfigError
from costflux.core.money import MoneyError, exact_pico, to_decimal
from costflux.core.rows import DIMENSIONS

__all__ = [
    "COST_CENTER",
    "EACH",
    "PRINCIPAL_KEYS",
    "SCOPE_KEYS",
    "Budget",
    "BudgetError",
    "BudgetStatus",
    "BudgetsFile",
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


class BudgetError(ConfigError):
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
    #: The period period_at found last: most calls (the gateway's, on every request) fall in it.
    _last_period: tuple[int, int] = field(default=(0, 0), init=False, repr=False, compare=False)

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
        start_ms, end_ms = self._last_period
        if start_ms <= ts_ms < end_ms:
            return start_ms, end_ms
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
        period = _midnight_ms(start, zone), _midnight_ms(end, zone)
        object.__setattr__(self, "_last_period", period)  # one tuple: read and set atomically
        return period


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


def _scope(allow_center: bool) -> Callable[[Any], dict[str, str]]:
    """The check of a scope: known keys, '*' for one principal key only (in a budget)."""
    allowed = (*SCOPE_KEYS, COST_CENTER) if allow_center else SCOPE_KEYS

    def scope(value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise refuse("expected a mapping of label to value, e.g. {team: ml-research}")
        for key, wanted in value.items():
            if key not in allowed:
                raise refuse(f"not a dimension costflux aggregates by; use {', '.join(allowed)}",
                             key)
            if wanted == EACH and (key not in PRINCIPAL_KEYS or not allow_center):
                raise refuse(f"'*' (each value apart) is for {' and '.join(PRINCIPAL_KEYS)} "
                             f"only; name one {key}", key)
        if list(value.values()).count(EACH) > 1:
            raise refuse("'*' may stand for one key only, e.g. {api_key: key-..., end_user: '*'}")
        return dict(value)
    return scope


def _scope_schema(allowed: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "object", "propertyNames": {"enum": list(allowed)},
                           "additionalProperties": {"type": "string"},
                           "description": "label: value, every one to match; e.g. {team: "
                                          "ml-research}"})


def _members(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise refuse("expected a non-empty list of scopes")
    return tuple(_scope(allow_center=False)(member) for member in value)


def _dollars(value: Any) -> int:
    try:
        amount = exact_pico(to_decimal(value))
    except MoneyError as exc:
        raise refuse(f"{exc}; write dollars, e.g. amount: 50000") from None
    if amount <= 0:
        raise refuse("must be more than 0 dollars")
    return amount


def _time_zone(value: Any) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise refuse(f"{value!r} is not an IANA time zone such as Europe/Berlin") from None
    return str(value)


class CustomPeriod(BaseModel):
    """A period of ``days`` days, counted from the local date ``starting``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: Annotated[int, Strict(), Field(gt=0)]
    starting: date


Scope = Annotated[dict[str, str], BeforeValidator(_scope(allow_center=True)),
                  _scope_schema((*SCOPE_KEYS, COST_CENTER))]


class BudgetEntry(ConfigModel):
    """One budget: an amount per period for the spend of a scope."""

    shape: ClassVar[str] = "expected a mapping with name, scope, period and amount"

    name: Name
    scope: Scope = {}
    period: Annotated[Literal["monthly", "weekly", "daily"] | CustomPeriod, Fix(
        lambda value: f"{value!r} is not monthly, weekly, daily or "
                      "{days: N, starting: YYYY-MM-DD}")]
    amount: Annotated[int, BeforeValidator(_dollars), WithJsonSchema(
        {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}],
         "description": "dollars per period"}),
        Fix("a price must be a number, got NoneType; write dollars, e.g. amount: 50000")]
    thresholds: Annotated[list[Annotated[int, Strict(), Field(gt=0, le=1000)]], Fix(
        "expected whole percentages, e.g. [50, 80, 100]")] = []
    reset_day: Annotated[int, Field(ge=1, le=28)] = 1
    timezone: Annotated[str, BeforeValidator(_time_zone)] = "UTC"
    project_after_days: Annotated[
        Annotated[int, Strict(), Field(ge=0)] | Annotated[float, Strict(), Field(ge=0)],
        Fix("expected a number of days, e.g. 1")] = 1
    enforce: Annotated[Enforce, Fix(
        lambda value: f"{value!r} is not none, soft or hard (hard: the gateway refuses "
                      "requests once the spend reaches the amount)")] = "none"

    @field_validator("reset_day", mode="wrap")
    @classmethod
    def _day_every_period_has(cls, value: Any, handler: Any, info: ValidationInfo) -> int:
        period = info.data.get("period")
        limit = 28 if period == "monthly" else 7
        if not isinstance(value, int) or not 1 <= value <= limit:
            raise refuse(f"expected 1-{limit} for a {period} budget (28 at most, so that every "
                         "month has it)")
        return int(handler(value))

    @model_validator(mode="after")
    def _principals_enforced(self) -> Self:
        if self.enforce == "none" and any(key in PRINCIPAL_KEYS for key in self.scope):
            raise refuse(f"a budget scoped by {' or '.join(PRINCIPAL_KEYS)} is measured by the "
                         "gateway's counters only: set enforce: soft or hard", "enforce")
        return self

    def budget(self, members: tuple[Mapping[str, str], ...]) -> Budget:
        custom = self.period if isinstance(self.period, CustomPeriod) else None
        return Budget(
            name=self.name, scope=self.scope, members=members,
            period="custom" if custom else str(self.period), enforce=self.enforce,
            amount_pico=self.amount, thresholds=tuple(sorted(set(self.thresholds))),
            reset_day=self.reset_day, timezone=self.timezone,
            custom_days=custom.days if custom else 0,
            custom_start=custom.starting if custom else None,
            project_after_ms=round(self.project_after_days * _DAY_MS),
        )


class BudgetsFile(NamedEntries):
    """A budgets file: ``budgets: [...]`` and the ``cost_centers`` their scopes may name."""

    shape: ClassVar[str] = "expected a top-level 'budgets:' list"
    entries: ClassVar[str] = "budgets"

    budgets: list[BudgetEntry]
    cost_centers: Annotated[
        dict[str, Annotated[tuple[dict[str, str], ...], BeforeValidator(_members),
                            WithJsonSchema({"type": "array", "minItems": 1,
                                            "items": _scope_schema(SCOPE_KEYS).json_schema})]],
        Fix("expected a mapping of name to a list of scopes, e.g. "
            "{cc-4410: [{team: ml-research}, {project: rag}]}"),
    ] = {}

    @model_validator(mode="after")
    def _centers_known(self) -> Self:
        for index, entry in enumerate(self.budgets):
            center = entry.scope.get(COST_CENTER)
            if center is not None and center not in self.cost_centers:
                raise refuse(f"{center!r} is not under the file's top-level cost_centers: "
                             "(name: [scopes])", "budgets", index, "scope", COST_CENTER)
        return self

    def budget_list(self) -> list[Budget]:
        return [entry.budget(self.cost_centers.get(entry.scope.get(COST_CENTER, ""), ()))
                for entry in self.budgets]


def parse_budgets_text(text: str, source: str = "budgets.yaml") -> list[Budget]:
    """Parse ``budgets: [{name, scope, period, amount, thresholds, ...}]`` and the optional
    ``cost_centers: {name: [scope, ...]}`` that ``scope: {cost_center: name}`` refers to (a
    cost center is the teams, projects... it pays for: a usage row of any of them is its)."""
    document = YamlText(text, source, BudgetError).value
    return check(BudgetsFile, document, named_entry_error(source, BudgetError)).budget_list()

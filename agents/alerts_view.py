"""The Redis serving view of budgets and active alerts, for gateways and the HTTP API.

Layout (``ns`` is the consumer group):

- ``ns:budgets``: hash, budget name -> JSON {name, scope, period, periodStart, periodEnd,
  spend, projected, limit, thresholds, status, thresholdsReached, evaluatedAt};
- ``ns:budget_status:<label>=<value>``: string, the worst status (OK, WARNING, CRITICAL) of
  the budgets scoped by exactly that one label, e.g. ``costflux:budget_status:team=search``;
- ``ns:alerts:active``: hash, alert_id -> the firing alert event's JSON;
- ``ns:alerts:evaluated_ms``: the event time (epoch ms) all of the above was evaluated at.

Every write replaces the whole view from the detector's state in one transaction (never an
increment), so re-running an evaluation after a crash or a rebalance writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import orjson
import redis.asyncio as aioredis

from costflux.core.budgets import BudgetStatus
from costflux.core.money import PICO_PER_DOLLAR
from costflux.schemas._types import from_epoch_ms
from costflux.schemas.alert import AlertEvent

__all__ = ["AlertsView"]

_SEVERITY = {"OK": 0, "WARNING": 1, "CRITICAL": 2}
#: A scope's status key outlives its budget by this much (removed budgets fade out).
STATUS_TTL_S = 86_400


class AlertsView:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self._client = client
        self._ns = namespace

    def status_key(self, label: str, value: str) -> str:
        return f"{self._ns}:budget_status:{label}={value}"

    async def write(self, statuses: Iterable[BudgetStatus], active: Iterable[AlertEvent],
                    evaluated_ms: int) -> None:
        statuses = list(statuses)
        budgets = {s.budget.name: orjson.dumps(_budget_json(s, evaluated_ms)) for s in statuses}
        worst: dict[str, str] = {}
        for status in statuses:
            if len(status.budget.scope) == 1:
                ((label, value),) = status.budget.scope.items()
                key = self.status_key(label, value)
                if _SEVERITY[status.status] >= _SEVERITY[worst.get(key, "OK")]:
                    worst[key] = status.status
        alerts = {event.alert_id: event.model_dump_json() for event in active}
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._budgets_key(), self._alerts_key())
            if budgets:
                pipe.hset(self._budgets_key(), mapping=budgets)  # type: ignore[arg-type]
            if alerts:
                pipe.hset(self._alerts_key(), mapping=alerts)  # type: ignore[arg-type]
            pipe.set(self._evaluated_key(), evaluated_ms)
            for key, worst_status in worst.items():
                pipe.set(key, worst_status, ex=STATUS_TTL_S)
            await pipe.execute()

    async def budgets(self) -> list[dict[str, Any]]:
        raw = await self._client.hgetall(self._budgets_key())
        return sorted((orjson.loads(v) for v in raw.values()), key=lambda b: b["name"])

    async def alerts(self) -> list[dict[str, Any]]:
        raw = await self._client.hgetall(self._alerts_key())
        return sorted((orjson.loads(v) for v in raw.values()),
                      key=lambda a: (a["starts_at"], a["alert_id"]))

    async def evaluated_ms(self) -> int | None:
        """The event time the view was last evaluated at."""
        value = await self._client.get(self._evaluated_key())
        return int(value) if value else None

    def _evaluated_key(self) -> str:
        return f"{self._ns}:alerts:evaluated_ms"

    def _budgets_key(self) -> str:
        return f"{self._ns}:budgets"

    def _alerts_key(self) -> str:
        return f"{self._ns}:alerts:active"


def _dollars(pico: int | Fraction) -> str:
    """Exact decimal dollars, to the pico-dollar (GPU cost finer than that is rounded down)."""
    whole = int(pico)
    return f"{whole // PICO_PER_DOLLAR}.{whole % PICO_PER_DOLLAR:012d}"


def _budget_json(status: BudgetStatus, evaluated_ms: int) -> dict[str, Any]:
    budget = status.budget
    return {
        "name": budget.name,
        "scope": dict(budget.scope),
        "period": budget.period,
        "periodStart": from_epoch_ms(status.period_start_ms).isoformat(),
        "periodEnd": from_epoch_ms(status.period_end_ms).isoformat(),
        "spend": _dollars(status.spend_pico),
        "projected": _dollars(status.projected_pico),
        "limit": _dollars(budget.amount_pico),
        "thresholds": list(budget.thresholds),
        "status": status.status,
        "thresholdsReached": list(status.thresholds_reached),
        "evaluatedAt": from_epoch_ms(evaluated_ms).isoformat(),
    }

"""What a flush counts beside its windows: spend per API key and end user, and per enforced
budget. Pure.

The windows are keyed by model, team, project, app, namespace, deployment and cluster. Two
figures cannot come from them:

- **Principals.** Per UTC day, the usage of each ``api_key`` and each ``end_user`` label
  (whole ``UsageSums``): the allocation API's ``aggregate=api_key`` and ``end_user``. End
  users can number hundreds of thousands, so they get their own hash per day instead of
  multiplying the windows' label combinations.
- **Budget counters.** Per enforced budget (``enforce: soft | hard``) and period, the cost of
  the requests it scopes, one counter per value for a ``"*"`` scope. The gateway reads them to
  admit or refuse a request (costflux.gateway.guard): exact, shared by every replica, one
  read per budget. A counter is keyed by the budget's ``counter_id`` (scope and periods), so
  renaming a budget or changing its amount keeps what it counted.

Both are added by the same atomic store step as the windows (costflux.streams.cost_store), so they
count each event exactly once, like the windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from costflux.core.aggregate import FlushRows, PartitionAggregate
from costflux.core.budgets import PRINCIPAL_KEYS, Budget
from costflux.core.ingest import Candidate
from costflux.core.rows import DIMENSIONS

__all__ = ["DAY_MS", "SpendRules", "add_spend_rows"]

DAY_MS = 86_400_000
#: How long a budget counter outlives its period: late events still land in it, and a reader
#: near the period's end still finds it.
_COUNTER_GRACE_S = 2 * 86_400


@dataclass(frozen=True, slots=True)
class SpendRules:
    """What the budget counters count (the principals' roll-up needs no rule; how long it is
    kept is the store's business)."""

    enforced: tuple[Budget, ...] = ()


def add_spend_rows(rows: FlushRows, counted: Sequence[Candidate], rules: SpendRules) -> None:
    """Add the principals' roll-up and the enforced budgets' counters of ``counted`` (the
    flush's events after deduplication) to ``rows``."""
    for index, label in enumerate(PRINCIPAL_KEYS):
        daily = PartitionAggregate(DAY_MS // 1000)
        daily.add_all(c[:3] + ((c.principal[index],),) + c[4:]
                      for c in counted if c.principal[index])
        for (day_ms, key), sums in daily.sums_by_start().items():
            rows.principals.setdefault((label, day_ms), {})[key[0]] = sums
    if rules.enforced:
        _count_budgets(rows, counted, rules.enforced)


def _count_budgets(rows: FlushRows, counted: Sequence[Candidate],
                   budgets: tuple[Budget, ...]) -> None:
    periods = [(0, 0)] * len(budgets)  # the period each budget's last event fell in
    per_value = [b.per_principal for b in budgets]
    counter_ids = [b.counter_id for b in budgets]
    for candidate in counted:
        if not candidate.cost_pico:
            continue
        labels = dict(zip(DIMENSIONS, candidate.dims, strict=True))
        labels.update(zip(PRINCIPAL_KEYS, candidate.principal, strict=True))
        ts_ms = candidate.ts_ms
        for index, budget in enumerate(budgets):
            if not budget.matches(labels):
                continue
            start, end = periods[index]
            if not start <= ts_ms < end:
                start, end = periods[index] = budget.period_at(ts_ms)
            key = (counter_ids[index], start, (end - start) // 1000 + _COUNTER_GRACE_S)
            counter = rows.budget_spend.setdefault(key, {})
            each = per_value[index]
            field = labels[each] if each else ""
            counter[field] = [counter.get(field, [0])[0] + candidate.cost_pico]


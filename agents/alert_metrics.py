"""Prometheus metrics of budgets, cost spikes and alerts (on the worker's registry)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction

from prometheus_client import CollectorRegistry, Counter, Gauge

from costflux.core.budgets import BudgetStatus
from costflux.core.money import PICO_PER_DOLLAR
from costflux.schemas.alert import AlertEvent
from costflux.streams.metrics import LabelLimiter

__all__ = ["AlertMetrics"]

STATUS_CODE = {"OK": 0, "WARNING": 1, "CRITICAL": 2}
SPIKE_LABELS = ("namespace", "team", "model")


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry, label_cap: int,
                 allowed: Mapping[str, Iterable[str]]) -> None:
        budget = ("budget",)
        self.spend = Gauge("llm_budget_spend_dollars", "Budget spend to date in its period",
                           budget, registry=registry)
        self.projected = Gauge("llm_budget_projected_dollars",
                               "Spend projected to the end of the budget's period", budget,
                               registry=registry)
        self.limit = Gauge("llm_budget_limit_dollars", "Budget amount per period", budget,
                           registry=registry)
        self.status = Gauge("llm_budget_status", "Budget status: 0 OK, 1 WARNING, 2 CRITICAL",
                            budget, registry=registry)
        self.spike_ratio = Gauge(
            "llm_cost_spike_ratio",
            "Last clock hour's cost / mean hourly cost of the 24 before (groups with history)",
            SPIKE_LABELS, registry=registry)
        self.alerts = Counter("costflux_alerts", "Alert events sent, by rule and state",
                              ("rule", "state"), registry=registry)
        self._limit = {name: LabelLimiter(label_cap, allowed.get(name, ()))
                       for name in SPIKE_LABELS}
        self._budgets: set[str] = set()
        self._spikes: set[tuple[str, ...]] = set()

    def set_budgets(self, statuses: Iterable[BudgetStatus]) -> None:
        shown = set()
        for status in statuses:
            name = status.budget.name
            shown.add(name)
            self.spend.labels(name).set(float(Fraction(status.spend_pico, PICO_PER_DOLLAR)))
            self.projected.labels(name).set(status.projected_pico / PICO_PER_DOLLAR)
            self.limit.labels(name).set(status.budget.amount_pico / PICO_PER_DOLLAR)
            self.status.labels(name).set(STATUS_CODE[status.status])
        for gone in self._budgets - shown:
            for gauge in (self.spend, self.projected, self.limit, self.status):
                gauge.remove(gone)
        self._budgets = shown

    def set_spike_ratios(self, ratios: Iterable[tuple[Mapping[str, str], Fraction]]) -> None:
        """The ratios of the newest evaluated hour; groups without one are dropped."""
        shown = set()
        for labels, ratio in ratios:
            values = tuple(self._limit[name](labels.get(name, "")) for name in SPIKE_LABELS)
            shown.add(values)
            self.spike_ratio.labels(*values).set(float(ratio))
        for gone in self._spikes - shown:
            self.spike_ratio.remove(*gone)
        self._spikes = shown

    def count(self, events: Iterable[AlertEvent]) -> None:
        for event in events:
            self.alerts.labels(event.rule, event.state).inc()

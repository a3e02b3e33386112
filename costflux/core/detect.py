"""Detection: one evaluation step of every rule and budget at an event time ``t``.

The caller (the detector agent) asks which windows a step reads (``tiles_for``), fetches them,
and calls ``step`` with them and the rule instances' states; it gets back the alert events
to send, the states to keep, and the budgets' status. Steps run at every multiple of the
evaluation interval, in order, as the watermark passes them, so ``for`` durations and alert
ids come out the same at any replay speed. Cost spikes compare clock hours, so they are
evaluated on the hour; budgets and the other rules at every step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction

from costflux.core.alerts import AlertState, Notice, Rule, alert_event, evaluate
from costflux.core.allocation import AllocationOptions, group_costs
from costflux.core.budgets import Budget, BudgetStatus, budget_status
from costflux.core.gpu import UNITS_PER_PICO
from costflux.core.rows import DIMENSIONS, WindowRows
from costflux.core.signals import (
    SPANS,
    LabelValues,
    Rows,
    Tile,
    Tiles,
    fully_loaded,
    hourly_signal,
    span_tiles,
    spike_hours,
    window_signal,
)
from costflux.core.spike import HOUR_MS
from costflux.schemas._types import from_epoch_ms
from costflux.schemas.alert import AlertEvent

__all__ = ["BUDGET_SIGNALS", "DetectOptions", "Detection", "StepResult",
           "instance_key", "instance_of"]

BUDGET_SIGNALS = ("budget_projection", "budget_spent_pct")


@dataclass(frozen=True, slots=True)
class DetectOptions:
    window_sizes_s: tuple[int, ...]
    step_ms: int
    allocation: AllocationOptions = AllocationOptions()


@dataclass(slots=True)
class StepResult:
    events: list[AlertEvent] = field(default_factory=list)
    states: dict[str, AlertState | None] = field(default_factory=dict)  # None: now inactive
    budgets: list[BudgetStatus] = field(default_factory=list)
    spike_ratios: list[tuple[dict[str, str], Fraction]] | None = None  # None: not evaluated


def instance_key(rule: str, labels: Mapping[str, str]) -> str:
    """The key of one rule instance's state (rule name and labels, unambiguous)."""
    return json.dumps([rule, sorted(labels.items())], separators=(",", ":"))


def instance_of(key: str) -> tuple[str, dict[str, str]]:
    rule, pairs = json.loads(key)
    return rule, dict(pairs)


class Detection:
    """Rules and budgets, evaluated step by step; memoises closed hours' budget spend."""

    def __init__(
        self, rules: Sequence[Rule], budgets: Sequence[Budget], options: DetectOptions
    ) -> None:
        self.rules = tuple(rules)
        # A budget of an API key or end user has no window rows to be evaluated from: only
        # the gateway's counters measure it (costflux.core.spend).
        self.budgets = {b.name: b for b in budgets if not b.scopes_principals}
        self.enforced = tuple(b for b in budgets if b.enforce != "none")
        self.options = options
        # budget name -> (period start, end of the whole hours summed, their spend in units)
        self._closed_hours: dict[str, tuple[int, int, int]] = {}

    # --- what a step reads ----------------------------------------------------------------

    def tiles_for(self, t_ms: int) -> set[Tile]:
        needed: set[Tile] = set()
        signals = {rule.signal for rule in self.rules}
        for signal, length in SPANS.items():
            if signal in signals:
                needed.update(self._span(t_ms - length, t_ms))
        if "cost_spike" in signals and t_ms % HOUR_MS == 0:
            for hour in spike_hours(t_ms):
                needed.update(self._span(hour, hour + HOUR_MS))
        for budget in self.budgets.values():  # statuses are served even without budget rules
            needed.update(self._budget_tiles(budget, t_ms)[0])
        return needed

    def _span(self, start_ms: int, end_ms: int) -> list[Tile]:
        return span_tiles(max(start_ms, 0), end_ms, self.options.window_sizes_s)

    def _budget_tiles(self, budget: Budget, t_ms: int) -> tuple[list[Tile], list[Tile], int]:
        """(all tiles to read, the whole hours not yet memoised, the end of whole hours).

        Spend to date is whole clock hours from hour windows plus finest windows for the
        ragged ends: a function of (period start, t) alone, so it is the same whether a
        worker has run all month or just started.
        """
        start, _ = budget.period_at(t_ms)
        first_hour = -(-start // HOUR_MS) * HOUR_MS
        hours_end = max(first_hour, t_ms - t_ms % HOUR_MS)
        memo = self._closed_hours.get(budget.name)
        summed_to = memo[1] if memo and memo[0] == start else first_hour
        new_hours = self._span(summed_to, hours_end) if hours_end > summed_to else []
        ragged = self._span(start, min(first_hour, t_ms))
        if t_ms > hours_end >= first_hour:
            ragged += self._span(hours_end, t_ms)
        return new_hours + ragged, new_hours, hours_end

    # --- one step -------------------------------------------------------------------------

    def step(self, t_ms: int, tiles: Tiles, states: Mapping[str, AlertState]) -> StepResult:
        result = StepResult()
        names = {rule.name for rule in self.rules}
        for key in states:  # of a rule since removed from the rules file: nothing evaluates it
            if instance_of(key)[0] not in names:
                result.states[key] = None
        statuses = self._budget_statuses(t_ms, tiles)
        result.budgets = list(statuses.values())
        for rule in self.rules:
            values = self._values(rule, t_ms, tiles, statuses, result)
            if values is None:
                continue  # not this rule's time (cost spikes: on the hour)
            self._evaluate(rule, values, t_ms, states, result)
        return result

    def _values(
        self, rule: Rule, t_ms: int, tiles: Tiles, statuses: Mapping[str, BudgetStatus],
        result: StepResult,
    ) -> dict[LabelValues, Fraction] | None:
        """Per labels (in ``rule.group_by`` order, or budget[, threshold]): the value."""
        signal = rule.signal
        if signal in SPANS:
            rows = _rows(tiles, self._span(t_ms - SPANS[signal], t_ms))
            return window_signal(signal, rule.group_by, rows, self.options.allocation)
        if signal == "cost_spike":
            if t_ms % HOUR_MS:
                return None

            def hour_rows(hour: int) -> list[Rows]:
                return _rows(tiles, self._span(hour, hour + HOUR_MS))

            ratios = hourly_signal(rule.group_by, hour_rows, t_ms, rule.min_history_ms,
                                   self.options.allocation)
            result.spike_ratios = [(dict(zip(rule.group_by, key, strict=True)), ratio)
                                   for key, ratio in sorted(ratios.items())]
            return ratios
        values: dict[LabelValues, Fraction] = {}
        for name, status in statuses.items():
            if signal == "budget_projection":
                values[(name,)] = status.projection_ratio
                continue
            percent = Fraction(status.spend_pico * 100, status.budget.amount_pico)
            for threshold in status.budget.thresholds:
                if threshold >= rule.threshold:  # the rule's threshold: the least that alerts
                    values[(name, str(threshold))] = percent
        return values

    def _evaluate(
        self, rule: Rule, values: Mapping[LabelValues, Fraction], t_ms: int,
        states: Mapping[str, AlertState], result: StepResult,
    ) -> None:
        group_by = _label_names(rule)
        instances = {instance_key(rule.name, dict(zip(group_by, key, strict=True))): key
                     for key in values}
        prefix = json.dumps([rule.name])[:-1] + ","
        known = [key for key in states if key.startswith(prefix)]
        for key in sorted(set(instances) | set(known)):
            labels = instance_of(key)[1]
            label_values = instances.get(key) or tuple(labels[g] for g in group_by)
            value = values.get(label_values)
            applied = _instance_rule(rule, labels)
            before = states.get(key, AlertState())
            after, notice = evaluate(applied, before, value, t_ms)
            if value is not None and after.firing_since_ms is not None:
                after = replace(after, last_value=float(value))
            kept = None if after.pending_since_ms is None else after
            if kept != (None if before.pending_since_ms is None else before):
                result.states[key] = kept
            if notice is not None:
                result.events.append(self._event(applied, labels, notice))

    def _event(self, rule: Rule, labels: dict[str, str], notice: Notice) -> AlertEvent:
        period = None
        if rule.signal in BUDGET_SIGNALS:
            budget = self.budgets.get(labels["budget"])
            if budget is not None:  # its period: each period alerts anew
                period = from_epoch_ms(budget.period_at(notice.starts_at_ms)[0]).isoformat()
        return alert_event(rule, labels, notice, period)

    def active(self, states: Mapping[str, AlertState]) -> list[AlertEvent]:
        """The firing alerts, as their latest event would show them."""
        rules = {rule.name: rule for rule in self.rules}
        shown = []
        for key, state in sorted(states.items()):
            name, labels = instance_of(key)
            rule = rules.get(name)
            if rule is None or state.firing_since_ms is None:
                continue
            notice = Notice("firing", state.last_value, state.firing_since_ms, None,
                            state.repeats)
            shown.append(self._event(_instance_rule(rule, labels), labels, notice))
        return shown

    # --- budgets --------------------------------------------------------------------------

    def _budget_statuses(self, t_ms: int, tiles: Tiles) -> dict[str, BudgetStatus]:
        statuses = {}
        for name, budget in sorted(self.budgets.items()):
            read, new_hours, hours_end = self._budget_tiles(budget, t_ms)
            start, _ = budget.period_at(t_ms)
            memo = self._closed_hours.get(name)
            closed = memo[2] if memo and memo[0] == start else 0
            closed += _spend(budget, _rows(tiles, new_hours), self.options.allocation)
            self._closed_hours[name] = (start, hours_end, closed)
            ragged = read[len(new_hours):]
            units = closed + _spend(budget, _rows(tiles, ragged), self.options.allocation)
            statuses[name] = budget_status(budget, Fraction(units, UNITS_PER_PICO), t_ms)
        return statuses


def _instance_rule(rule: Rule, labels: Mapping[str, str]) -> Rule:
    """The rule as one instance applies it: a budget threshold alert's own threshold."""
    if rule.signal == "budget_spent_pct":
        return replace(rule, threshold=Decimal(labels["threshold"]))
    return rule


def _label_names(rule: Rule) -> tuple[str, ...]:
    if rule.signal == "budget_projection":
        return ("budget",)
    if rule.signal == "budget_spent_pct":
        return ("budget", "threshold")
    return rule.group_by


_EMPTY = WindowRows()


def _rows(tiles: Tiles, wanted: Iterable[Tile]) -> list[Rows]:
    return [tiles.get(tile, _EMPTY) for tile in wanted]


def _spend(budget: Budget, rows: list[Rows], options: AllocationOptions) -> int:
    """The budget's fully loaded spend in these windows, in GPU cost units."""
    if not rows:
        return 0
    costs = group_costs(rows, range(len(DIMENSIONS)), fully_loaded(options))
    return sum(cost.total_units for key, cost in costs.items()
               if budget.matches(dict(zip(DIMENSIONS, key, strict=True))))


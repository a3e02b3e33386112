"""The alert rules: the seeds' defaults, and a rules file to replace them.

A rules file is ``rules: [{name, signal, op, threshold, for, severity, ...}]``; every rule
watches one *signal*, a value costflux computes in event time per group of labels.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, get_args

from costflux.core.alerts import Rule, Severity
from costflux.core.money import MoneyError, to_decimal
from costflux.core.named_entries import named_entries
from costflux.core.rows import DIMENSIONS
from costflux.core.windows import duration_ms

__all__ = ["DEFAULT_RULES", "SIGNALS", "RulesError", "parse_rules_text"]

#: signal -> (what it is, the labels it may be grouped by)
SIGNALS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cost_per_request": ("$ per request over the last hour (token and GPU cost)", ("model",)),
    "gpu_utilization": ("GPU utilization, % of GPU time busy over the last hour",
                        ("node", "gpu_type", "model", "namespace")),
    "idle_cost_1h": ("$ of idle GPU time in the last hour",
                     ("node", "gpu_type", "model", "namespace", "team")),
    "daily_cost": ("$ spent in the last 24 hours", DIMENSIONS),
    "gpu_idle_waste": ("utilization % of GPUs that cost money in the last hour",
                       ("node", "gpu_type", "model", "namespace")),
    "cost_spike": ("last hour's cost / mean hourly cost of the previous 24 hours",
                   ("namespace", "team", "model", "project", "app", "deployment", "cluster")),
    "budget_projection": ("a budget's projected spend / its amount", ("budget",)),
    "budget_spent_pct": ("a budget's spend to date, % of its amount (the threshold is each of "
                         "the budget's own thresholds)", ("budget", "threshold")),
}


class RulesError(ValueError):
    """The rules file is invalid; the message names the field and the fix."""


# The seeds' PrometheusRule alerts and BudgetManager statuses, as streaming rules.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("HighLLMCostPerRequest", "cost_per_request", ">", to_decimal("0.1"), 30 * 60_000,
         summary="LLM cost per request is high (> $0.10 for 30m)", group_by=("model",)),
    Rule("LowGPUUtilization", "gpu_utilization", "<", to_decimal(30), 3_600_000,
         summary="GPU utilization under 30% for 1h: consider scaling in",
         group_by=("node", "gpu_type")),
    Rule("HighIdleCost", "idle_cost_1h", ">", to_decimal(100), 3_600_000,
         summary="Idle GPU cost over $100 in an hour"),
    Rule("HighDailyCost", "daily_cost", ">", to_decimal(1000), 0,
         summary="Cost over $1000 in 24h"),
    Rule("GPUIdleWaste", "gpu_idle_waste", "<", to_decimal(30), 3_600_000,
         summary="GPUs that cost money ran under 30% utilization for 1h",
         group_by=("node", "gpu_type")),
    Rule("CostSpike", "cost_spike", ">", to_decimal(2), 0, resolve_threshold=to_decimal("1.5"),
         min_history_ms=6 * 3_600_000, summary="Cost spike: last hour over 2x the 24h mean",
         group_by=("namespace", "team", "model")),
    Rule("BudgetWarning", "budget_projection", ">", to_decimal(1), 0,
         summary="Budget projected to overrun", group_by=("budget",)),
    Rule("BudgetCritical", "budget_projection", ">", to_decimal("1.1"), 0, "critical",
         summary="Budget projected to overrun by more than 10%", group_by=("budget",)),
    Rule("BudgetThreshold", "budget_spent_pct", ">=", to_decimal(0), 0, "info",
         summary="Budget spend reached a threshold", group_by=("budget", "threshold")),
)

_FIELDS = {"name", "signal", "op", "threshold", "for", "severity", "resolve_threshold",
           "repeat", "summary", "group_by", "min_history"}


def parse_rules_text(text: str, source: str = "rules.yaml") -> tuple[Rule, ...]:
    """Parse a rules file; it replaces the defaults (copy the ones to keep)."""
    return tuple(
        _parse_rule(entry, where) for where, entry in named_entries(
            text, source, "rules", _FIELDS, RulesError, "name, signal, op and threshold")
    )


def _parse_rule(entry: dict[str, Any], where: str) -> Rule:
    signal = entry.get("signal")
    if signal not in SIGNALS:
        raise RulesError(f"{where}.signal: {signal!r} is not one of {', '.join(SIGNALS)}")
    op = entry.get("op", ">")
    if op not in (">", "<", ">="):
        raise RulesError(f"{where}.op: {op!r}; use '>', '<' or '>='")
    severity = entry.get("severity", "warning")
    if severity not in get_args(Severity):
        raise RulesError(f"{where}.severity: {severity!r}; use info, warning or critical")
    group_by = entry.get("group_by", [])
    allowed = SIGNALS[signal][1]
    if not isinstance(group_by, list) or any(g not in allowed for g in group_by):
        raise RulesError(f"{where}.group_by: {signal} can be grouped by {', '.join(allowed)}")
    return Rule(
        name=entry["name"], signal=signal, op=op, severity=severity, group_by=tuple(group_by),
        threshold=_number(entry.get("threshold"), f"{where}.threshold"),
        resolve_threshold=None if entry.get("resolve_threshold") is None else _number(
            entry["resolve_threshold"], f"{where}.resolve_threshold"),
        for_ms=_duration(entry.get("for", "0"), f"{where}.for"),
        repeat_ms=_duration(entry.get("repeat", "0"), f"{where}.repeat"),
        min_history_ms=_duration(entry.get("min_history", "0"), f"{where}.min_history"),
        summary=str(entry.get("summary", entry["name"])),
    )


def _number(value: Any, where: str) -> Decimal:
    try:
        return to_decimal(value)
    except MoneyError:
        raise RulesError(f"{where}: {value!r} is not a number, e.g. 0.1 or 30") from None


def _duration(value: Any, where: str) -> int:
    length = duration_ms(str(value))
    if length is None:
        raise RulesError(f"{where}: {value!r} is not a duration such as 90s, 30m, 1h or 1d")
    return length

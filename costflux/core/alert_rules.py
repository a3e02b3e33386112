"""The alert rules: the seeds' defaults, and a rules file to replace them.

A rules file is ``rules: [{name, signal, op, threshold, for, severity, ...}]``; every rule
watches one *signal*, a value costflux computes in event time per group of labels.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, Strict, ValidationInfo, field_validator

from costflux.core.alerts import Rule, Severity
from costflux.core.config_files import (
    ConfigModel,
    Duration,
    Fix,
    Name,
    NamedEntries,
    Number,
    YamlText,
    check,
    named_entry_error,
    refuse,
)
from costflux.core.errors import ConfigError
from costflux.core.money import to_decimal
from costflux.core.rows import DIMENSIONS

__all__ = ["DEFAULT_RULES", "SIGNALS", "RulesError", "RulesFile", "parse_rules_text"]

Signal = Literal["cost_per_request", "gpu_utilization", "idle_cost_1h", "daily_cost",
                 "gpu_idle_waste", "cost_spike", "budget_projection", "budget_spent_pct"]
#: signal -> (what it is, the labels it may be grouped by)
SIGNALS: dict[Signal, tuple[str, tuple[str, ...]]] = {
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


class RulesError(ConfigError):
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

_NUMBER = Fix(lambda value: f"{value!r} is not a number, e.g. 0.1 or 30")


class RuleEntry(ConfigModel):
    """One alert rule: a signal compared with a threshold, for a while, per group of labels."""

    shape: ClassVar[str] = "expected a mapping with name, signal, op and threshold"

    name: Name
    signal: Annotated[Signal, Fix(lambda value: f"{value!r} is not one of {', '.join(SIGNALS)}")]
    op: Annotated[Literal[">", "<", ">="], Fix(lambda value: f"{value!r}; use '>', '<' or '>='")
                  ] = ">"
    threshold: Annotated[Number, _NUMBER]
    for_: Annotated[Duration, Field(alias="for")] = 0
    severity: Annotated[Severity, Fix(lambda value: f"{value!r}; use info, warning or critical")
                        ] = "warning"
    resolve_threshold: Annotated[Number | None, _NUMBER] = None
    repeat: Duration = 0
    summary: Annotated[str | None, BeforeValidator(lambda v: v if v is None else str(v))] = None
    group_by: list[Annotated[str, Strict()]] = []
    min_history: Duration = 0

    @field_validator("group_by", mode="wrap")
    @classmethod
    def _groupable(cls, value: Any, handler: Any, info: ValidationInfo) -> list[str]:
        signal = info.data.get("signal")
        allowed = SIGNALS[signal][1] if signal in SIGNALS else ()
        if not isinstance(value, list) or any(label not in allowed for label in value):
            raise refuse(f"{signal} can be grouped by {', '.join(allowed)}")
        return list(handler(value))

    def rule(self) -> Rule:
        return Rule(
            name=self.name, signal=self.signal, op=self.op, severity=self.severity,
            group_by=tuple(self.group_by), threshold=self.threshold,
            resolve_threshold=self.resolve_threshold, for_ms=self.for_, repeat_ms=self.repeat,
            min_history_ms=self.min_history,
            summary=self.name if self.summary is None else self.summary,
        )


class RulesFile(NamedEntries):
    """A rules file: ``rules: [...]``, which replaces the default rules."""

    shape: ClassVar[str] = "expected a top-level 'rules:' list"
    entries: ClassVar[str] = "rules"

    rules: list[RuleEntry]


def parse_rules_text(text: str, source: str = "rules.yaml") -> tuple[Rule, ...]:
    """Parse a rules file; it replaces the defaults (copy the ones to keep)."""
    document = YamlText(text, source, RulesError).value
    parsed = check(RulesFile, document, named_entry_error(source, RulesError))
    return tuple(entry.rule() for entry in parsed.rules)

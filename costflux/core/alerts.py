"""Alert rules and their state machine: pending -> firing -> resolved, in event time.

Like a Prometheus alert: a rule instance (a rule and one set of labels) whose condition holds
is *pending*; once it has held for the rule's ``for`` duration it is *firing* and one firing
notice is sent; when it stops holding, one *resolved* notice. While firing, a reminder is sent
every ``repeat`` (0: never). A rule with a ``resolve_threshold`` has hysteresis: it fires
above ``threshold`` and resolves only below ``resolve_threshold``, so a value hovering at the
threshold does not flap.

Everything is a function of the values and event times it is given, so a replay at any speed
sends the same notices with the same ``alert_id``s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from typing import Literal, NamedTuple

from costflux.schemas._types import from_epoch_ms
from costflux.schemas.alert import AlertEvent, alert_fingerprint

__all__ = ["AlertState", "Notice", "Rule", "alert_event", "evaluate"]

Severity = Literal["info", "warning", "critical"]
Value = Fraction | Decimal | int | float


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    signal: str  # what it watches (see costflux.core.alert_rules.SIGNALS)
    op: Literal[">", "<", ">="]
    threshold: Decimal
    for_ms: int = 0
    severity: Severity = "warning"
    resolve_threshold: Decimal | None = None  # hysteresis: firing holds until past this
    repeat_ms: int = 0
    summary: str = ""
    group_by: tuple[str, ...] = ()  # one rule instance per value of these labels
    min_history_ms: int = 0  # cost_spike: no ratio for a group seen for less than this

    def holds(self, value: Value, firing: bool) -> bool:
        limit = self.threshold
        if firing and self.resolve_threshold is not None:
            limit = self.resolve_threshold
        if self.op == ">=":
            return value >= limit
        return value > limit if self.op == ">" else value < limit


@dataclass(frozen=True, slots=True)
class AlertState:
    """One rule instance's state; the inactive state is ``AlertState()``."""

    pending_since_ms: int | None = None
    firing_since_ms: int | None = None
    last_sent_ms: int | None = None
    repeats: int = 0
    evaluated_ms: int | None = None  # the newest evaluation, to ignore older ones
    last_value: float | None = None  # for showing an active alert; not used to decide


class Notice(NamedTuple):
    """One alert event to send: a transition, or a reminder while firing (``repeat`` > 0)."""

    state: Literal["firing", "resolved"]
    value: Value | None
    starts_at_ms: int
    ends_at_ms: int | None
    repeat: int


def evaluate(
    rule: Rule, state: AlertState, value: Value | None, now_ms: int
) -> tuple[AlertState, Notice | None]:
    """Step one rule instance to event time ``now_ms`` given its value (None: no data)."""
    if state.evaluated_ms is not None and now_ms < state.evaluated_ms:
        return state, None  # an older evaluation arriving late changes nothing
    firing = state.firing_since_ms is not None
    if value is None or not rule.holds(value, firing):
        if firing:
            assert state.firing_since_ms is not None
            notice = Notice("resolved", value, state.firing_since_ms, now_ms, 0)
            return AlertState(evaluated_ms=now_ms), notice
        return AlertState(evaluated_ms=now_ms), None
    pending_since = state.pending_since_ms if state.pending_since_ms is not None else now_ms
    if firing:
        assert state.firing_since_ms is not None and state.last_sent_ms is not None
        if rule.repeat_ms and now_ms - state.last_sent_ms >= rule.repeat_ms:
            repeats = state.repeats + 1
            notice = Notice("firing", value, state.firing_since_ms, None, repeats)
            return replace(state, last_sent_ms=now_ms, repeats=repeats, evaluated_ms=now_ms), notice
        return replace(state, evaluated_ms=now_ms), None
    if now_ms - pending_since >= rule.for_ms:
        notice = Notice("firing", value, now_ms, None, 0)
        return AlertState(pending_since, now_ms, now_ms, 0, now_ms), notice
    return AlertState(pending_since, evaluated_ms=now_ms), None


def alert_event(
    rule: Rule, labels: dict[str, str], notice: Notice, period: str | None = None
) -> AlertEvent:
    """The alert event of a notice.

    Its ``alert_id`` fingerprints the rule, the labels and the period: the firing start by
    default (one id per episode, shared by its firing, reminders and resolved notice), or a
    budget's period, so each period alerts anew.
    """
    starts = from_epoch_ms(notice.starts_at_ms)
    ends = None if notice.ends_at_ms is None else from_epoch_ms(notice.ends_at_ms)
    no_data = notice.value is None
    return AlertEvent(
        alert_id=alert_fingerprint(rule.name, labels, period or starts.isoformat()),
        rule=rule.name,
        severity=rule.severity,
        state=notice.state,
        labels=labels,
        value=0.0 if notice.value is None else float(notice.value),
        threshold=float(rule.threshold),
        summary=f"{rule.summary} (no data)" if no_data else rule.summary,
        starts_at=starts,
        ends_at=ends,
        repeat=notice.repeat,
    )

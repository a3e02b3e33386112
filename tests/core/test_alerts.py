"""Alert rules in event time: the state machine, cost spikes, and the rules file.

Expected notices are written out by hand from the rule's definition, not computed with it.
"""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import pytest

from costflux.core.alert_rules import DEFAULT_RULES, RulesError, parse_rules_text
from costflux.core.alerts import AlertState, Rule, alert_event, evaluate
from costflux.core.spike import HOUR_MS, spike_ratio

MINUTE = 60_000
SLOW = Rule("SlowBurn", "cost_per_request", ">", Decimal("0.1"), for_ms=30 * MINUTE)


def run(rule: Rule, values: list[tuple[int, Fraction | int | None]]) -> list[tuple[int, str, int]]:
    """Evaluate a series of (minute, value); return (minute, state, repeat) of every notice."""
    state, sent = AlertState(), []
    for minute, value in values:
        state, notice = evaluate(rule, state, value, minute * MINUTE)
        if notice is not None:
            sent.append((minute, notice.state, notice.repeat))
    return sent


def test_pending_then_firing_after_the_for_duration_then_resolved_once_each() -> None:
    over, under = Fraction(11, 100), Fraction(9, 100)
    series = [(m, over) for m in range(45)] + [(m, under) for m in range(45, 60)]
    assert run(SLOW, series) == [(30, "firing", 0), (45, "resolved", 0)]


def test_a_condition_shorter_than_for_never_fires() -> None:
    series = [(m, Fraction(1)) for m in range(29)] + [(29, Fraction(0))]
    series += [(m, Fraction(1)) for m in range(30, 59)]
    assert run(SLOW, series) == []


def test_equality_is_not_a_breach() -> None:
    assert run(SLOW, [(m, Fraction(1, 10)) for m in range(90)]) == []


def test_reminders_repeat_while_firing_with_their_own_number() -> None:
    rule = Rule("R", "daily_cost", ">", Decimal(1000), repeat_ms=60 * MINUTE)
    series = [(m, 2000) for m in range(0, 150, 10)] + [(150, 10)]
    assert run(rule, series) == [(0, "firing", 0), (60, "firing", 1), (120, "firing", 2),
                                 (150, "resolved", 0)]


def test_hysteresis_holds_firing_until_under_the_resolve_threshold() -> None:
    rule = Rule("S", "cost_spike", ">", Decimal(2), resolve_threshold=Decimal("1.5"))
    values = [Fraction(21, 10), Fraction(19, 10), Fraction(21, 10), Fraction(16, 10),
              Fraction(14, 10), Fraction(19, 10)]
    assert run(rule, list(enumerate(values))) == [(0, "firing", 0), (4, "resolved", 0)]


def test_no_data_resolves_and_an_older_evaluation_changes_nothing() -> None:
    rule = Rule("R", "daily_cost", ">", Decimal(1))
    state, notice = evaluate(rule, AlertState(), 5, 10 * MINUTE)
    assert notice is not None and notice.state == "firing"
    same, late = evaluate(rule, state, 0, 5 * MINUTE)
    assert (same, late) == (state, None)
    _, resolved = evaluate(rule, state, None, 11 * MINUTE)
    assert resolved is not None and resolved.state == "resolved"
    assert (resolved.starts_at_ms, resolved.ends_at_ms) == (10 * MINUTE, 11 * MINUTE)


def test_firing_and_resolved_share_a_deterministic_alert_id() -> None:
    rule = Rule("R", "daily_cost", ">", Decimal(1000), summary="daily")
    labels = {"team": "<!channel>"}
    fired, notice = evaluate(rule, AlertState(), 1500, 1_700_000_000_000)
    assert notice is not None
    _, ended = evaluate(rule, fired, 10, 1_700_003_600_000)
    assert ended is not None
    first, last = alert_event(rule, labels, notice), alert_event(rule, labels, ended)
    assert first.alert_id == last.alert_id == alert_event(rule, labels, notice).alert_id
    assert (first.state, last.state, first.value, last.value) == ("firing", "resolved", 1500, 10)
    assert last.ends_at is not None and first.starts_at == last.starts_at
    other = alert_event(rule, {"team": "b"}, notice)
    assert other.alert_id != first.alert_id


# --- cost spike ---------------------------------------------------------------------------


def test_a_planted_spike_fires_once_resolves_once_and_cold_start_is_silent() -> None:
    spike_rule = next(r for r in DEFAULT_RULES if r.name == "CostSpike")
    rng = random.Random(3)
    # Two days of hourly cost around $10 (pico-dollars), one hour at 5x, back to normal.
    hourly = {h * HOUR_MS: 10 * 10**12 + rng.randrange(-10**12, 10**12) for h in range(48)}
    hourly[30 * HOUR_MS] = 50 * 10**12
    state, sent = AlertState(), []
    for hour in range(48):
        ratio = spike_ratio(hourly, hour * HOUR_MS, 0, spike_rule.min_history_ms)
        if hour < 6:
            assert ratio is None  # cold start: under 6 h of history
        state, notice = evaluate(spike_rule, state, ratio, (hour + 1) * HOUR_MS)
        if notice is not None:
            sent.append((hour, notice.state))
    assert sent == [(30, "firing"), (31, "resolved")]


def test_spike_ratio_is_exact_over_the_previous_24_hours() -> None:
    hourly = {h * HOUR_MS: 100 for h in range(30)} | {5 * HOUR_MS: 2500, 30 * HOUR_MS: 300}
    # Hour 5 is outside 24 h before hour 30 (hours 6-29), so the baseline is 100.
    assert spike_ratio(hourly, 30 * HOUR_MS, 0, 6 * HOUR_MS) == 3
    # From hour 29 the baseline (hours 5-28) includes it: (2500 + 23 x 100) / 24 = 200.
    assert spike_ratio(hourly, 29 * HOUR_MS, 0, 6 * HOUR_MS) == Fraction(100, 200)
    assert spike_ratio({}, 30 * HOUR_MS, 0, 0) is None  # zero baseline: no ratio


# --- the rules file -----------------------------------------------------------------------


def test_the_defaults_are_the_seeds_rules() -> None:
    by_name = {r.name: r for r in DEFAULT_RULES}
    assert set(by_name) == {"HighLLMCostPerRequest", "LowGPUUtilization", "HighIdleCost",
                            "HighDailyCost", "GPUIdleWaste", "CostSpike", "BudgetWarning",
                            "BudgetCritical", "BudgetThreshold"}  # the last: thresholds [50..]
    cost = by_name["HighLLMCostPerRequest"]
    assert (cost.op, cost.threshold, cost.for_ms) == (">", Decimal("0.1"), 30 * MINUTE)
    assert (by_name["LowGPUUtilization"].op, by_name["LowGPUUtilization"].for_ms) == ("<",
                                                                                    HOUR_MS)
    assert by_name["CostSpike"].group_by == ("namespace", "team", "model")
    assert by_name["BudgetCritical"].severity == "critical"


def test_a_rules_file_parses_and_errors_name_the_field() -> None:
    (rule,) = parse_rules_text("""
rules:
  - name: TeamDaily
    signal: daily_cost
    op: ">"
    threshold: 250.5
    for: 15m
    repeat: 4h
    group_by: [team]
""")
    assert (rule.threshold, rule.for_ms, rule.repeat_ms, rule.group_by) == (
        Decimal("250.5"), 15 * MINUTE, 4 * HOUR_MS, ("team",))
    bad = {
        "for: 1.5h": "rules[0].for: '1.5h' is not a duration",
        "signal: costs": "rules[0].signal: 'costs' is not one of",
        "threshold: lots": "rules[0].threshold: 'lots' is not a number",
        "group_by: [node]": "rules[0].group_by: daily_cost can be grouped by",
        "severity: page": "rules[0].severity: 'page'",
        "thresold: 3": "rules[0].thresold: unknown field",
    }
    for line, message in bad.items():
        key = line.split(":")[0]
        fields = {"name": "X", "signal": "daily_cost", "threshold": "1", key: line.split(": ")[1]}
        text = "rules:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in fields.items())
        with pytest.raises(RulesError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_rules_text(text)

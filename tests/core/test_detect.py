"""Detection steps over window rows: spikes, budgets, daily cost, in event time.

The rows are built here from a list of priced events, the way the windows hold them; the
expected alerts are written out from the rules' definitions, not computed with the code.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from costflux.core.alert_rules import DEFAULT_RULES, parse_rules_text
from costflux.core.alerts import AlertState
from costflux.core.budgets import parse_budgets_text
from costflux.core.detect import Detection, DetectOptions
from costflux.core.rows import (
    DimKey,
    UsageSums,
    WindowRows,
    decode_usage_dims,
    decode_usage_sums,
    encode_sums,
)
from costflux.core.signals import Tile
from costflux.core.spike import HOUR_MS
from costflux.schemas.alert import AlertEvent
from tests.core.test_budgets import ISSUE_EXAMPLE

MINUTE = 60_000
PICO = 10**12
SIZES = (60, 3600)
RULES = {rule.name: rule for rule in DEFAULT_RULES}


def ms(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


EMPTY = WindowRows()


def windows(events: Iterable[tuple[int, str, int, int]]) -> dict[Tile, WindowRows]:
    """(ts_ms, team, cost_pico, requests) -> the rows of every window of every size."""
    tiles: dict[Tile, dict[DimKey, list[int]]] = {}
    for ts, team, cost, requests in events:
        dims = ("gpt-4o", team, "", "", "prod", "", "")
        for size in SIZES:
            tile = (size, ts - ts % (size * 1000))
            sums = tiles.setdefault(tile, {}).setdefault(dims, [0] * 5)
            sums[0] += cost
            sums[4] += requests
    return {tile: WindowRows({dims: UsageSums(*sums) for dims, sums in rows.items()})
            for tile, rows in tiles.items()}


class Run:
    """Steps a Detection through event time the way the agent does, keeping states."""

    def __init__(self, detection: Detection, events: list[tuple[int, str, int, int]]) -> None:
        self.detection = detection
        self.tiles = windows(events)
        self.states: dict[str, AlertState] = {}
        self.sent: list[tuple[int, AlertEvent]] = []

    def until(self, start_ms: int, end_ms: int) -> None:
        for t in range(start_ms, end_ms + 1, MINUTE):
            needed = self.detection.tiles_for(t)
            result = self.detection.step(t, {k: self.tiles.get(k, EMPTY) for k in needed},
                                         self.states)
            for key, state in result.states.items():
                if state is None:
                    self.states.pop(key, None)
                else:
                    self.states[key] = state
            self.sent += [(t, event) for event in result.events]


def test_a_planted_spike_fires_once_and_resolves_once_with_a_silent_cold_start() -> None:
    start = ms(2026, 11, 1)
    # $0.30 an hour for 30 hours, in three requests; hour 20 costs $0.90 (a 3x spike).
    events = [(start + h * HOUR_MS + m * 20 * MINUTE, "search", (3 if h == 20 else 1) * PICO // 10,
               1) for h in range(30) for m in range(3)]
    run = Run(Detection([RULES["CostSpike"]], [], DetectOptions(SIZES, MINUTE)), events)
    run.until(start, start + 30 * HOUR_MS)
    assert [(t, e.state, e.labels) for t, e in run.sent] == [
        (start + 21 * HOUR_MS, "firing", {"namespace": "prod", "team": "search",
                                          "model": "gpt-4o"}),
        (start + 22 * HOUR_MS, "resolved", {"namespace": "prod", "team": "search",
                                            "model": "gpt-4o"}),
    ]
    firing, resolved = (e for _, e in run.sent)
    assert firing.alert_id == resolved.alert_id
    assert firing.value == 3.0  # $0.90 against a mean of $0.30


def test_a_new_group_in_its_first_hours_is_not_a_spike() -> None:
    start = ms(2026, 11, 1)
    events = [(start + h * HOUR_MS, "new", (h + 1) * 10 * PICO, 1) for h in range(6)]
    run = Run(Detection([RULES["CostSpike"]], [], DetectOptions(SIZES, MINUTE)), events)
    run.until(start, start + 7 * HOUR_MS)
    assert run.sent == []  # each hour doubles the mean, but history is under 6 hours


def test_the_seeds_budget_example_through_steps_then_rollover() -> None:
    (budget,) = parse_budgets_text(ISSUE_EXAMPLE)
    start, day15 = ms(2026, 11, 1), ms(2026, 11, 16)  # 30-day month; end of day 15
    # $25,000 over days 1-15, never ahead of the pace of $50,000 a month (a day's spend lands
    # in its last minute), then $2,000 in the next minute and $1,000 in the one after.
    events = [(start + (d + 1) * 86_400_000 - MINUTE, "ml-research",
               (1_676 if d == 14 else 1_666) * PICO, 10) for d in range(15)]
    events += [(day15, "ml-research", 2_000 * PICO, 1), (day15 + MINUTE, "ml-research",
                                                          1_000 * PICO, 1)]
    events += [(day15, "other-team", 90_000 * PICO, 1)]  # outside the scope
    rules = [RULES[name] for name in ("BudgetWarning", "BudgetCritical", "BudgetThreshold")]
    detection = Detection(rules, [budget], DetectOptions(SIZES, MINUTE))
    run = Run(detection, events)

    run.until(start, day15)
    (status,) = detection.step(day15, {k: run.tiles.get(k, EMPTY) for k in
                                       detection.tiles_for(day15)}, run.states).budgets
    assert (status.spend_pico, status.projected_pico, status.status) == (
        25_000 * PICO, 50_000 * PICO, "OK")
    assert [(t, e.rule, e.labels.get("threshold")) for t, e in run.sent] == [
        (day15, "BudgetThreshold", "50")]  # and never a warning before
    run.sent.clear()

    run.until(day15 + MINUTE, day15 + 2 * MINUTE)
    assert [(t - day15, e.rule, e.state) for t, e in run.sent] == [
        (MINUTE, "BudgetWarning", "firing"),
        (2 * MINUTE, "BudgetCritical", "firing"),
    ]
    run.sent.clear()

    # On November 30 the $28,000 projects to about $28,000: both resolve; at the rollover the
    # 50 % threshold resolves too and December starts OK with nothing spent.
    december = ms(2026, 12, 1)
    run.until(december - MINUTE, december)
    assert [(december - t, e.rule, e.state) for t, e in run.sent] == [
        (MINUTE, "BudgetWarning", "resolved"), (MINUTE, "BudgetCritical", "resolved"),
        (0, "BudgetThreshold", "resolved")]
    assert run.states == {}
    (rolled,) = detection.step(december, {}, {}).budgets
    assert (rolled.status, rolled.spend_pico, rolled.period_start_ms) == ("OK", 0, december)


def test_budget_spend_is_the_same_for_a_detector_started_mid_month() -> None:
    (budget,) = parse_budgets_text(ISSUE_EXAMPLE)
    start = ms(2026, 11, 1)
    events = [(start + k * 7 * MINUTE + 13_000, "ml-research", 123_456_789 * (k % 5 + 1), 1)
              for k in range(2000)]
    running = Run(Detection([], [budget], DetectOptions(SIZES, MINUTE)), events)
    t = start + 2000 * 7 * MINUTE - 17 * MINUTE
    running.until(start, t - MINUTE)
    fresh = Detection([], [budget], DetectOptions(SIZES, MINUTE))
    for detection in (running.detection, fresh):
        (status,) = detection.step(t, {k: running.tiles.get(k, EMPTY) for k in
                                       detection.tiles_for(t)}, {}).budgets
        expected = sum(cost for ts, _, cost, _ in events if ts < t)
        assert status.spend_pico == expected


def test_daily_cost_fires_at_once_when_24h_spend_passes_1000_dollars() -> None:
    start = ms(2026, 11, 1)
    events = [(start + h * HOUR_MS, "ads", 100 * PICO, 1) for h in range(12)]
    run = Run(Detection([RULES["HighDailyCost"]], [], DetectOptions(SIZES, MINUTE)), events)
    run.until(start, start + 40 * HOUR_MS)
    # $1,100 once the 11th hour's event is in; $1,200 in all; back to $1,000 (not over it)
    # once the first two hours' events have left the 24h span.
    assert [(t - start, e.state) for t, e in run.sent] == [
        (10 * HOUR_MS + MINUTE, "firing"), (25 * HOUR_MS + MINUTE, "resolved")]


def test_daily_cost_by_cluster_and_a_cluster_budget_read_new_and_old_rows() -> None:
    (rule,) = parse_rules_text("""
rules:
  - {name: ClusterDaily, signal: daily_cost, op: ">", threshold: 1000, group_by: [cluster]}
""")
    (budget,) = parse_budgets_text(
        "budgets: [{name: eu, scope: {cluster: eu-west-1}, period: daily, amount: 5000}]")
    start = ms(2026, 11, 1)
    # $100 an hour in eu-west-1, $50 in us-east-1, and $7 an hour in rows an older writer
    # left in the store (five dimensions, five sums: no deployment, no cluster), read back
    # the way the serving view reads every row.
    row_dollars = {
        '["gpt-4o","search","","","prod","gpt-4o-prod","eu-west-1"]': 100,
        '["gpt-4o","search","","","prod","gpt-4o-prod","us-east-1"]': 50,
        '["gpt-4o","search","","","prod"]': 7,
    }
    stored: dict[Tile, dict[str, list[int]]] = {}
    for hour in range(12):
        ts = start + hour * HOUR_MS
        for size in SIZES:
            window = stored.setdefault((size, ts - ts % (size * 1000)), {})
            for row, dollars in row_dollars.items():
                sums = window.setdefault(row, [0] * (5 if row.count(",") == 4 else 7))
                sums[0] += dollars * PICO
                sums[4] += 1
    tiles = {tile: WindowRows({decode_usage_dims(k): decode_usage_sums(encode_sums(v))
                               for k, v in rows.items()})
             for tile, rows in stored.items()}
    run = Run(Detection([rule], [budget], DetectOptions(SIZES, MINUTE)), [])
    run.tiles = tiles
    run.until(start, start + 12 * HOUR_MS)
    # eu-west-1 passes $1,000 in 24h once its 11th hour is in; us-east-1 ($600) never does.
    assert [(t - start, e.state, e.labels) for t, e in run.sent] == [
        (10 * HOUR_MS + MINUTE, "firing", {"cluster": "eu-west-1"})]
    t = start + 12 * HOUR_MS
    (status,) = run.detection.step(t, {k: tiles.get(k, EMPTY) for k in
                                       run.detection.tiles_for(t)}, run.states).budgets
    assert status.spend_pico == 1_200 * PICO


def test_a_rule_removed_by_a_reload_leaves_no_state_behind_and_the_others_go_on() -> None:
    start = ms(2026, 11, 1)
    events = [(start + h * HOUR_MS, "ads", 100 * PICO, 1) for h in range(12)]
    run = Run(Detection([RULES["HighDailyCost"]], [], DetectOptions(SIZES, MINUTE)), events)
    run.until(start, start + 11 * HOUR_MS)
    assert [e.state for _, e in run.sent] == ["firing"]
    assert run.states  # the firing instance
    # The rules file changed: HighDailyCost is gone, CostSpike is new.
    run.detection = Detection([RULES["CostSpike"]], [], DetectOptions(SIZES, MINUTE))
    run.until(start + 11 * HOUR_MS + MINUTE, start + 11 * HOUR_MS + MINUTE)
    assert run.states == {}
    assert [e.state for _, e in run.sent] == ["firing"]  # nothing more: it is not evaluated
    assert run.detection.active(run.states) == []

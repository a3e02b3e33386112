"""Budgets: local-time periods (month ends, DST), the seed's projection, thresholds, the file.

Expected statuses come from the seed's BudgetManager formula, recomputed here with Decimal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.core.budgets import BudgetError, budget_status, parse_budgets_text

PICO = 10**12
ISSUE_EXAMPLE = """
budgets: [{name: ml-research-monthly, scope: {team: ml-research}, period: monthly,
           amount: 50000, thresholds: [50, 80, 100]}]
"""


def ms(year: int, month: int, day: int, hour: int = 0, zone: str = "UTC") -> int:
    return int(datetime(year, month, day, hour, tzinfo=ZoneInfo(zone)).timestamp()) * 1000


def seed_status(spend: int, days_elapsed: int, budget: int) -> str:
    """The seed's BudgetManager.check_status, written out again in exact fractions."""
    projected = Fraction(spend, days_elapsed) * 30
    if projected > budget * Fraction(11, 10):
        return "CRITICAL"
    return "WARNING" if projected > budget else "OK"


def test_the_seeds_example_in_a_30_day_month_then_rollover() -> None:
    (budget,) = parse_budgets_text(ISSUE_EXAMPLE)
    end_of_day_15 = ms(2026, 11, 16)  # November has 30 days
    for spend, want_projected in ((25_000, 50_000), (27_000, 54_000), (28_000, 56_000)):
        status = budget_status(budget, spend * PICO, end_of_day_15)
        assert status.projected_pico == want_projected * PICO
        assert status.status == seed_status(spend, 15, 50_000)
    assert [budget_status(budget, s * PICO, end_of_day_15).status
            for s in (25_000, 27_000, 28_000)] == ["OK", "WARNING", "CRITICAL"]
    # The next period starts on December 1 with nothing spent in it.
    rolled = budget_status(budget, 0, ms(2026, 12, 1, 1))
    assert (rolled.status, rolled.period_start_ms) == ("OK", ms(2026, 12, 1))


def test_equality_is_ok_and_one_pico_dollar_over_is_not() -> None:
    (budget,) = parse_budgets_text(ISSUE_EXAMPLE)
    now = ms(2026, 11, 16)
    assert budget_status(budget, 25_000 * PICO, now).status == "OK"
    assert budget_status(budget, 25_000 * PICO + 1, now).status == "WARNING"
    assert budget_status(budget, 27_500 * PICO, now).status == "WARNING"  # exactly 1.1x
    assert budget_status(budget, 27_500 * PICO + 1, now).status == "CRITICAL"


def test_no_projection_in_the_first_day_of_a_period() -> None:
    (budget,) = parse_budgets_text(ISSUE_EXAMPLE)
    early = budget_status(budget, 2_000 * PICO, ms(2026, 11, 1, 1))  # $2k in the first hour
    assert (early.projected_pico, early.status) == (2_000 * PICO, "OK")


def test_thresholds_are_reached_by_actual_spend() -> None:
    (budget,) = parse_budgets_text(ISSUE_EXAMPLE)
    now = ms(2026, 11, 20)
    assert budget_status(budget, 39_999 * PICO, now).thresholds_reached == (50,)
    assert budget_status(budget, 40_000 * PICO, now).thresholds_reached == (50, 80)


def test_monthly_periods_follow_the_reset_day_across_month_and_year_ends() -> None:
    (budget,) = parse_budgets_text("""
budgets: [{name: b, period: monthly, amount: 10, reset_day: 15, timezone: America/New_York}]
""")
    ny = "America/New_York"
    assert budget.period_at(ms(2026, 1, 10, 12, ny)) == (ms(2025, 12, 15, 0, ny),
                                                        ms(2026, 1, 15, 0, ny))
    assert budget.period_at(ms(2026, 1, 15, 0, ny)) == (ms(2026, 1, 15, 0, ny),
                                                       ms(2026, 2, 15, 0, ny))
    # 23:30 local on the 14th is still the old period, though UTC is already the 15th.
    assert budget.period_at(ms(2026, 3, 14, 23, ny) + 1_800_000)[1] == ms(2026, 3, 15, 0, ny)


def test_daily_periods_are_23_and_25_hours_on_dst_days() -> None:
    (budget,) = parse_budgets_text(
        "budgets: [{name: d, period: daily, amount: 1, timezone: Europe/Berlin}]")
    berlin = "Europe/Berlin"
    spring = budget.period_at(ms(2026, 3, 29, 12, berlin))
    autumn = budget.period_at(ms(2026, 10, 25, 12, berlin))
    assert spring[1] - spring[0] == 23 * 3_600_000
    assert autumn[1] - autumn[0] == 25 * 3_600_000
    assert datetime.fromtimestamp(spring[0] / 1000, UTC) == datetime(2026, 3, 28, 23, tzinfo=UTC)


def test_weekly_and_custom_periods() -> None:
    weekly, custom = parse_budgets_text("""
budgets:
  - {name: w, period: weekly, amount: 1, reset_day: 1}
  - {name: c, period: {days: 14, starting: 2026-01-05}, amount: 1}
""")
    wednesday = ms(2026, 11, 25, 9)
    assert weekly.period_at(wednesday) == (ms(2026, 11, 23), ms(2026, 11, 30))
    assert custom.period_at(ms(2026, 1, 20)) == (ms(2026, 1, 19), ms(2026, 2, 2))
    assert custom.period_at(ms(2026, 1, 4)) == (ms(2025, 12, 22), ms(2026, 1, 5))


_PERIODS_FILE = """
budgets:
  - {name: d, period: daily, amount: 1, timezone: Europe/Berlin}
  - {name: w, period: weekly, amount: 1, reset_day: 3, timezone: America/New_York}
  - {name: m, period: monthly, amount: 1, reset_day: 28, timezone: Asia/Kolkata}
  - {name: c, period: {days: 10, starting: 2026-01-05}, amount: 1, timezone: Australia/Sydney}
"""


@given(st.lists(st.integers(ms(2025, 1, 1), ms(2027, 12, 31)), min_size=1, max_size=40)
       .map(lambda times: times + [times[0] - 1, times[0] + 1]))
def test_a_budget_reused_answers_as_a_new_one_for_any_order_of_times(times: list[int]) -> None:
    # period_at remembers the last period it found (the gateway asks on every request).
    reused = parse_budgets_text(_PERIODS_FILE)
    for ts in times:
        for budget, fresh in zip(reused, parse_budgets_text(_PERIODS_FILE), strict=True):
            start, end = budget.period_at(ts)
            assert (start, end) == fresh.period_at(ts)
            assert start <= ts < end


def test_scope_matches_on_every_key() -> None:
    (budget,) = parse_budgets_text(ISSUE_EXAMPLE)
    assert budget.matches({"team": "ml-research", "model": "gpt-4"})
    assert not budget.matches({"team": "search"})


def test_a_cost_center_budget_covers_the_scopes_the_file_lists() -> None:
    (budget,) = parse_budgets_text("""
cost_centers:
  cc-4410: [{team: ml-research}, {project: rag, namespace: prod}]
budgets:
  - {name: cc, scope: {cost_center: cc-4410, model: gpt-4}, period: monthly, amount: 10}
""")
    assert budget.matches({"team": "ml-research", "model": "gpt-4"})
    assert budget.matches({"team": "search", "project": "rag", "namespace": "prod",
                           "model": "gpt-4"})
    assert not budget.matches({"team": "search", "project": "rag", "namespace": "dev",
                               "model": "gpt-4"})
    assert not budget.matches({"team": "ml-research", "model": "llama-2-7b"})
    with pytest.raises(BudgetError, match=r"scope.cost_center: 'cc-9' is not under"):
        parse_budgets_text("budgets: [{name: b, scope: {cost_center: cc-9}, period: daily, "
                           "amount: 1}]")
    with pytest.raises(BudgetError, match=r"cost_centers.cc-1.node: not a dimension"):
        parse_budgets_text("cost_centers: {cc-1: [{node: a}]}\nbudgets: []")


def test_a_budget_may_be_scoped_by_deployment_and_cluster() -> None:
    (budget,) = parse_budgets_text("""
cost_centers:
  cc-eu: [{cluster: eu-west-1}, {deployment: gpt-4-prod}]
budgets:
  - {name: eu, scope: {cost_center: cc-eu, team: search}, period: daily, amount: 10}
""")
    assert budget.matches({"team": "search", "cluster": "eu-west-1", "deployment": ""})
    assert budget.matches({"team": "search", "cluster": "us-east-1", "deployment": "gpt-4-prod"})
    assert not budget.matches({"team": "search", "cluster": "us-east-1", "deployment": "x"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: b, period: yearly, amount: 1}", r"budgets\[0\].period: 'yearly' is not monthly"),
        ("{name: b, period: monthly, amount: -5}", r"budgets\[0\].amount: must be more than 0"),
        ("{name: b, period: monthly, amount: 1, reset_day: 31}", r"reset_day: expected 1-28"),
        ("{name: b, period: monthly, amount: 1, timezone: Mars/Base}", r"timezone: 'Mars/Base'"),
        ("{name: b, period: monthly, amount: 1, scope: {node: x}}", r"scope.node: not a"),
        ("{name: b, period: monthly, amount: 1, thresholds: [50.5]}", r"thresholds: expected"),
        ("{name: b, period: monthly, amount: 1, limit: 3}", r"budgets\[0\].limit: unknown field"),
    ],
)
def test_invalid_budgets_name_the_field_and_the_fix(entry: str, message: str) -> None:
    with pytest.raises(BudgetError, match=message):
        parse_budgets_text(f"budgets: [{entry}]")

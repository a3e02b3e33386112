"""Enforced budgets in the budgets file, the flush's principal roll-up and budget counters, and
the gateway's verdict, against sums worked out by hand or with Decimal."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from costflux.core.aggregate import FlushRows
from costflux.core.budgets import BudgetError, parse_budgets_text
from costflux.core.enforcement import (
    judge_request,
    max_cost_pico,
    refusal,
    scopes_of,
    soft_header,
)
from costflux.core.ingest import Candidate
from costflux.core.pricing import ModelPrice, ModelTier
from costflux.core.rows import UsageSums
from costflux.core.spend import DAY_MS, SpendRules, add_spend_rows

NOON = int(datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp() * 1000)
DIMS = ("gpt-4o", "search", "rag", "web", "prod", "", "")

BUDGETS = """
budgets:
  - name: search-daily
    scope: {team: search}
    period: daily
    amount: 5
    enforce: hard
  - name: per-user
    scope: {end_user: "*"}
    period: daily
    amount: 0.5
    enforce: soft
  - name: one-key-monthly
    scope: {api_key: key-00112233aabbccdd}
    period: monthly
    amount: 100
    timezone: Europe/Berlin
    enforce: hard
  - name: watched-only
    scope: {team: search}
    period: monthly
    amount: 1000
"""


def candidate(event_id: str, ts_ms: int, cost: int, api_key: str = "", user: str = "",
              dims: tuple[str, ...] = DIMS) -> Candidate:
    return Candidate(event_id, event_id, ts_ms, dims, cost, 10, 2, 3, 0, 0, None,  # type: ignore[arg-type]
                     None, (api_key, user))


def test_enforce_and_principal_scopes_parse() -> None:
    budgets = {b.name: b for b in parse_budgets_text(BUDGETS)}
    assert budgets["search-daily"].enforce == "hard"
    assert budgets["watched-only"].enforce == "none"
    assert budgets["per-user"].per_principal == "end_user"
    assert budgets["one-key-monthly"].scopes_principals
    assert not budgets["search-daily"].scopes_principals


@pytest.mark.parametrize(("text", "message"), [
    ("budgets: [{name: a, scope: {team: '*'}, period: daily, amount: 1, enforce: hard}]",
     "budgets.yaml: budgets[0].scope.team: '*' (each value apart) is for api_key and end_user"),
    ("budgets: [{name: a, scope: {end_user: '*'}, period: daily, amount: 1}]",
     "budgets.yaml: budgets[0].enforce: a budget scoped by api_key or end_user"),
    ("budgets: [{name: a, scope: {}, period: daily, amount: 1, enforce: block}]",
     "budgets.yaml: budgets[0].enforce: 'block' is not none, soft or hard"),
    ("budgets: [{name: a, scope: {api_key: '*', end_user: '*'}, period: daily, amount: 1, "
     "enforce: soft}]", "'*' may stand for one key only"),
])
def test_bad_enforcement_is_named(text: str, message: str) -> None:
    with pytest.raises(BudgetError) as raised:
        parse_budgets_text(text)
    assert message in str(raised.value)


def test_counter_id_survives_rename_and_new_amount_not_new_scope() -> None:
    base = parse_budgets_text(BUDGETS)[0]
    renamed = parse_budgets_text(BUDGETS.replace("search-daily", "renamed")
                                 .replace("amount: 5\n", "amount: 7\n"))[0]
    rescoped = parse_budgets_text(BUDGETS.replace("{team: search}\n    period: daily",
                                                  "{team: other}\n    period: daily"))[0]
    assert renamed.counter_id == base.counter_id
    assert rescoped.counter_id != base.counter_id


def test_flush_counts_principals_per_day_and_budgets_per_period() -> None:
    budgets = parse_budgets_text(BUDGETS)
    rules = SpendRules(tuple(b for b in budgets if b.enforce != "none"))
    rng = random.Random(7)
    counted = []
    expected_users: dict[str, Decimal] = {}
    expected_team = Decimal(0)
    for index in range(500):
        user = f"user-{rng.randrange(20)}" if rng.random() < 0.8 else ""
        team = rng.choice(["search", "ads"])
        cost = rng.randrange(10**9)
        dims = (DIMS[0], team, *DIMS[2:])
        ts = NOON + rng.randrange(-3, 3) * 3_600_000
        counted.append(candidate(f"e{index}", ts, cost, "key-00112233aabbccdd", user, dims))
        if user:
            expected_users[user] = expected_users.get(user, Decimal(0)) + cost
        if team == "search":
            expected_team += cost
    rows = FlushRows()
    add_spend_rows(rows, counted, rules)
    day = NOON - NOON % DAY_MS
    users = rows.principals[("end_user", day)]
    assert {u: Decimal(UsageSums(*s).cost_pico) for u, s in users.items()} == expected_users
    assert all(UsageSums(*s).requests > 0 for s in users.values())
    keys = rows.principals[("api_key", day)]
    assert UsageSums(*keys["key-00112233aabbccdd"]).requests == 500
    search = next(b for b in budgets if b.name == "search-daily")
    (counter,) = [v for (cid, start, _), v in rows.budget_spend.items()
                  if cid == search.counter_id and start == day]
    assert counter == {"": [int(expected_team)]}
    per_user = next(b for b in budgets if b.name == "per-user")
    (by_user,) = [v for (cid, _s, _k), v in rows.budget_spend.items()
                  if cid == per_user.counter_id]
    assert {u: Decimal(v[0]) for u, v in by_user.items()} == expected_users


def test_monthly_counter_follows_the_budgets_time_zone() -> None:
    budgets = [b for b in parse_budgets_text(BUDGETS) if b.name == "one-key-monthly"]
    # 2026-11-30 23:30 UTC is already December 1st in Berlin (UTC+1).
    late = int(datetime(2026, 11, 30, 23, 30, tzinfo=UTC).timestamp() * 1000)
    early = late - 3_600_000
    rows = FlushRows()
    add_spend_rows(rows, [candidate("a", early, 3, "key-00112233aabbccdd"),
                          candidate("b", late, 5, "key-00112233aabbccdd")], SpendRules(
                              tuple(budgets)))
    starts = {start: v[""][0] for (_c, start, _k), v in rows.budget_spend.items()}
    december = int(datetime(2026, 11, 30, 23, tzinfo=UTC).timestamp() * 1000)
    assert starts[december] == 5
    assert sum(starts.values()) == 8


def test_verdict_refuses_at_the_amount_and_names_soft_budgets() -> None:
    budgets = parse_budgets_text(BUDGETS)
    labels = {"model": "gpt-4o", "team": "search", "end_user": "u1",
              "api_key": "key-00112233aabbccdd"}
    scopes = scopes_of(budgets, labels, NOON)
    assert [s.budget.name for s in scopes] == ["search-daily", "per-user", "one-key-monthly"]
    assert scopes[1].field == "u1"
    five = 5 * 10**12
    assert judge_request(scopes, [five - 1, 0, 0]).refused is None
    refused = judge_request(scopes, [five, 0, 0]).refused
    assert refused is not None and refused[0].budget.name == "search-daily"
    soft = judge_request(scopes, [0, 10**12 // 2, 0])
    assert soft.refused is None
    assert soft_header(soft.over) == "per-user; spent=0.5; limit=0.5"
    body = refusal(scopes[0], five + 1)
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "budget_exceeded"
    assert error["spent"] == "5.000000000001" and error["limit"] == "5"
    assert error["resets_at"] == "2026-12-07T00:00:00Z"
    assert "search-daily" in error["message"] and "2026-12-07T00:00:00Z" in error["message"]


def test_max_cost_takes_the_dearest_kind_of_any_tier() -> None:
    price = ModelPrice(3_000_000, 15_000_000, 300_000,
                       tiers=(ModelTier(200_000, 6_000_000, 22_500_000, 600_000),),
                       explicit_parts=(("cache_write_1h", 6_500_000),))
    assert max_cost_pico(price, 1000, 100) == 1000 * 6_500_000 + 100 * 22_500_000

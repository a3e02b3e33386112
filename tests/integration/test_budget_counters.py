"""Enforced budgets' counters on a real Redis: written by the store's atomic step, read by the
gateway at most a second old, and reservations held, settled and dropped once counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from costflux.core.aggregate import FlushRows
from costflux.core.budgets import parse_budgets_text
from costflux.core.enforcement import scopes_of
from costflux.core.pricing_file import parse_pricing_text
from costflux.gateway.guard import BudgetGuard, GuardConfig, Refusal
from costflux.streams.budget_counters import BudgetCounters
from costflux.streams.cost_store import CostStore, FlushWrite, Outcome, SourceState
from tests.background import run_async

pytestmark = pytest.mark.integration

NOON = 1_796_558_400_000  # 2026-12-06T12:00:00Z
DOLLAR = 10**12
BUDGET = parse_budgets_text(
    "budgets: [{name: team-a, scope: {team: a}, period: daily, amount: 1, enforce: hard}]")[0]
SCOPES = scopes_of([BUDGET], {"team": "a"}, NOON)


def apply(store: CostStore, state: SourceState, offset: int, ids: list[str],
          cost_pico: int) -> SourceState:
    scope = SCOPES[0]
    rows = FlushRows(budget_spend={(scope.counter_id, scope.period_start_ms, 86_400): {
        "": [cost_pico]}})
    after = SourceState(offset, NOON, "t")
    result = store.apply(FlushWrite("usage:0", state, after, ids, (), rows, 1))
    assert result.outcome is Outcome.APPLIED
    return after


def test_spend_hold_settle_and_counted(redis_client: redis.Redis, redis_url: str,
                                       unique: Callable[[str], str]) -> None:
    namespace = unique("ns")
    store = CostStore(redis_client, namespace, dedup_kind="usage", dedup_horizon_s=3600,
                      retention_s=lambda size_s: 86_400, finest_window_s=60,
                      window_max_rows=1000)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        counters = BudgetCounters(client, namespace, max_age_s=0.2)
        try:
            assert await counters.spends(SCOPES) == [0]
            state = apply(store, SourceState(), 1, ["other"], DOLLAR // 10)
            assert await counters.spends(SCOPES) == [0]  # cached: at most max_age_s old
            await asyncio.sleep(0.25)
            assert await counters.spends(SCOPES) == [DOLLAR // 10]

            bound = 4 * DOLLAR // 10
            assert (await counters.hold(SCOPES, "gw:1", bound, NOON)).admitted
            assert (await counters.hold(SCOPES, "gw:2", bound, NOON)).admitted
            refused = await counters.hold(SCOPES, "gw:3", bound, NOON)  # 0.1 + 0.8 + 0.4 > 1
            assert not refused.admitted
            assert (refused.spent_pico, refused.held_pico) == (DOLLAR // 10, 8 * DOLLAR // 10)
            # gw:1 cost 0.3 and the pipeline counted it: its hold goes, the counter has it.
            await counters.settle(SCOPES, "gw:1", 3 * DOLLAR // 10, NOON)
            apply(store, state, 2, ["gw:1"], 3 * DOLLAR // 10)
            await counters.settle(SCOPES, "gw:2", DOLLAR // 10, NOON)  # 0.4 + 0.1 + 0.4 <= 1
            assert (await counters.hold(SCOPES, "gw:3", bound, NOON)).admitted
            assert not (await counters.hold(SCOPES, "gw:4", bound, NOON)).admitted
            await counters.release(SCOPES, "gw:3")
            assert (await counters.hold(SCOPES, "gw:4", bound, NOON)).admitted
            # A hold whose request vanished ends at its deadline.
            later = NOON + 601_000
            answer = await counters.hold(SCOPES, "gw:5", 6 * DOLLAR // 10, later)
            assert answer.admitted and answer.held_pico == 0
        finally:
            await client.aclose()

    run_async(scenario())


def test_many_readers_share_one_read(redis_url: str, unique: Callable[[str], str]) -> None:
    async def scenario() -> int:
        client = aioredis.Redis.from_url(redis_url)
        counters = BudgetCounters(client, unique("ns"))
        reads = 0
        real_pipeline = client.pipeline

        def counting_pipeline(*args: object, **kwargs: object) -> object:
            nonlocal reads
            reads += 1
            return real_pipeline(*args, **kwargs)  # type: ignore[arg-type]

        client.pipeline = counting_pipeline  # type: ignore[method-assign, assignment]
        try:
            results = await asyncio.gather(*(counters.spends(SCOPES) for _ in range(50)))
            assert results == [[0]] * 50
        finally:
            await client.aclose()
        return reads

    assert run_async(scenario()) == 1


def test_a_refused_scope_is_admitted_again_when_its_period_starts(
    redis_client: redis.Redis, redis_url: str, unique: Callable[[str], str],
) -> None:
    """The gateway's guard on a clock set by the test: a daily budget spent on one day refuses
    until the last millisecond of that day and admits from the first of the next."""
    namespace = unique("ns")
    store = CostStore(redis_client, namespace, dedup_kind="usage", dedup_horizon_s=3600,
                      retention_s=lambda size_s: 86_400, finest_window_s=60,
                      window_max_rows=1000)
    apply(store, SourceState(), 1, ["spent"], DOLLAR)  # the whole $1 at noon
    midnight = NOON + 12 * 3_600_000
    clock = [NOON]
    prices = parse_pricing_text("model_costs: {m: {input_per_1m: 1, output_per_1m: 1}}")

    async def scenario() -> list[int]:
        client = aioredis.Redis.from_url(redis_url)
        guard = BudgetGuard(lambda: [BUDGET], dict, BudgetCounters(client, namespace,
                                                                   max_age_s=60),
                            lambda: prices, GuardConfig(), CollectorRegistry(),
                            wall_clock_ms=lambda: clock[0])
        statuses = []
        try:
            for moment in (NOON, midnight - 1, midnight, midnight + 3_600_000):
                clock[0] = moment
                admitted = await guard.admit("chat", {"model": "m"}, 20, {}, {"team": "a"},
                                             "m")
                statuses.append(admitted.status if isinstance(admitted, Refusal) else 200)
        finally:
            await client.aclose()
        return statuses

    assert run_async(scenario()) == [429, 429, 200, 200]


def test_holds_add_up_through_settling_counting_and_pruning(
    redis_client: redis.Redis, redis_url: str, unique: Callable[[str], str],
) -> None:
    """A hundred requests at once: each holds its bound, settles to its cost, and leaves the
    held total as the pipeline counts it; what is held is never less than what is pending."""
    namespace = unique("ns")
    store = CostStore(redis_client, namespace, dedup_kind="usage", dedup_horizon_s=3600,
                      retention_s=lambda size_s: 86_400, finest_window_s=60,
                      window_max_rows=1000)
    cent = DOLLAR // 100

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        counters = BudgetCounters(client, namespace, max_age_s=0.0)
        ids = [f"gw:{n}" for n in range(100)]
        try:
            for event_id in ids:
                assert (await counters.hold(SCOPES, event_id, cent, NOON)).admitted
            full = await counters.hold(SCOPES, "gw:probe", cent, NOON)
            assert (full.admitted, full.held_pico) == (False, DOLLAR)
            for event_id in ids:
                await counters.settle(SCOPES, event_id, cent // 2, NOON)
            # The pipeline counts the first 70 (their claims and cost in one store step).
            apply(store, SourceState(), 1, ids[:70], 70 * cent // 2)
            probe = await counters.hold(SCOPES, "gw:probe", 80 * cent, NOON)
            assert not probe.admitted and probe.spent_pico == 70 * cent // 2
            # 64 counted holds pruned by that admission, the rest by the next one.
            assert probe.held_pico == (100 - 64) * cent // 2
            probe = await counters.hold(SCOPES, "gw:probe", 80 * cent, NOON)
            assert (probe.spent_pico, probe.held_pico) == (70 * cent // 2, 30 * cent // 2)
            # $0.35 counted + $0.15 held + $0.50 = $1: admitted exactly at the amount.
            assert (await counters.hold(SCOPES, "gw:last", 50 * cent, NOON)).admitted
            await counters.release(SCOPES, "gw:last")
            for event_id in ids[70:]:
                await counters.release(SCOPES, event_id)
            assert (await counters.hold(SCOPES, "gw:all", DOLLAR - 35 * cent, NOON)).admitted
        finally:
            await client.aclose()

    run_async(scenario())

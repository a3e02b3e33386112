"""The worker's HTTP API without a worker, a broker or Redis: each endpoint method of
``costflux.agents.http_api.WorkerApi`` over window rows held in memory.

Money is checked against Decimal sums of the rows' pico-dollars, worked out here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry, Counter

from costflux.agents.http_api import AdviceInputs, JsonAnswer, WorkerApi
from costflux.core.advice import Assumptions
from costflux.core.allocation import AllocationOptions
from costflux.core.pricing import ModelPrice, OtherCost
from costflux.core.rows import DimKey, GpuDims, GpuSums, UsageSums, WindowRows

T = TypeVar("T")
PICO = Decimal(10) ** 12
HOUR_MS = 3_600_000
MINUTE_S, HOUR_S = 60, 3600
#: 2024-05-01T00:00:00Z: May has 31 days.
MAY_1 = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000


def at(hour: int, minute: int = 0, second: int = 0) -> int:
    return MAY_1 + hour * HOUR_MS + minute * 60_000 + second * 1000


def dims(model: str, team: str = "search") -> DimKey:
    return (model, team, "proj", "app", "ml-prod", f"{model}-prod", "us-east-1")


def gpu_dims(model: str, dollars_per_hour: int, tier: str = "on_demand") -> GpuDims:
    rates = f"{dollars_per_hour * 10**12},{10**12},{10**12}"
    return ("node-1", "nvidia-a100-80gb", tier, "ml-prod", model, "search", rates)


class MemoryWindows:
    """Window rows by (size_s, start_ms), principal days by (label, day), in memory."""

    def __init__(self, windows: Mapping[tuple[int, int], WindowRows] | None = None,
                 newest_ms: int | None = None,
                 principal_days: Mapping[tuple[str, int], dict[str, UsageSums]] | None = None
                 ) -> None:
        self.windows = dict(windows or {})
        self.newest_ms = newest_ms
        self.principal_days = dict(principal_days or {})
        self.tiles_read: list[tuple[int, int]] = []

    async def newest_event_time_ms(self) -> int | None:
        return self.newest_ms

    async def earliest_window_ms(self, size_s: int) -> int | None:
        return min((start for size, start in self.windows if size == size_s), default=None)

    async def read_windows(self, tiles: list[tuple[int, int]]) -> list[WindowRows]:
        self.tiles_read += tiles
        return [self.windows.get(tile, WindowRows()) for tile in tiles]

    async def read_principal_days(self, label: str, days: list[int]
                                  ) -> dict[int, dict[str, UsageSums]]:
        return {day: self.principal_days.get((label, day), {}) for day in days}


class MemoryAlerts:
    def __init__(self, budgets: list[dict[str, Any]] | None = None,
                 alerts: list[dict[str, Any]] | None = None,
                 evaluated_ms: int | None = None) -> None:
        self._budgets = budgets or []
        self._alerts = alerts or []
        self._evaluated_ms = evaluated_ms

    async def budgets(self) -> list[dict[str, Any]]:
        return self._budgets

    async def alerts(self) -> list[dict[str, Any]]:
        return self._alerts

    async def evaluated_ms(self) -> int | None:
        return self._evaluated_ms


def no_price(model: str, ts_ms: int) -> ModelPrice | None:
    return None


def make_api(windows: MemoryWindows | None = None, alerts: MemoryAlerts | None = None, *,
             other_costs: Mapping[str, OtherCost] | None = None,
             probes: tuple[tuple[bool, str], tuple[bool, str]] = ((True, "ok"), (True, "ok")),
             gpu_defaults: AllocationOptions | None = None,
             advice: AdviceInputs | None = None,
             registry: CollectorRegistry | None = None) -> WorkerApi:
    liveness, readiness = probes
    return WorkerApi(
        windows or MemoryWindows(), alerts or MemoryAlerts(),
        window_sizes_s=(MINUTE_S, HOUR_S),
        gpu_defaults=gpu_defaults or AllocationOptions(),
        advice=advice or AdviceInputs(Assumptions(), no_price),
        other_costs=lambda: other_costs or {},
        probes=(lambda: liveness, lambda: readiness),
        registry=registry or CollectorRegistry(),
    )


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def dollars(pico: int) -> Decimal:
    return Decimal(pico) / PICO


def exact(row: Mapping[str, Any], name: str) -> Decimal:
    return Decimal(str(row[name]))


#: Three hours of gpt-4 and llama usage in hourly windows, newest event at 02:59:59.
USAGE = {
    (HOUR_S, at(0)): WindowRows({
        dims("gpt-4"): UsageSums(1_234_567_890_123, 100, 50, requests=3),
        dims("llama", "ads"): UsageSums(7, 10, 5, requests=1),
    }),
    (HOUR_S, at(1)): WindowRows({
        dims("gpt-4"): UsageSums(2_000_000_000_001, 200, 80, requests=4),
    }),
    (HOUR_S, at(2)): WindowRows({
        dims("gpt-4", "ads"): UsageSums(999_999_999_999, 1, 1, requests=1),
    }),
}
THREE_HOURS = "2024-05-01T00:00:00Z,2024-05-01T03:00:00Z"
#: Over 20,000 windows even at the coarsest size (an hour): more than one query may read.
TOO_LONG = "2020-01-01T00:00:00Z,2024-05-01T00:00:17Z"


# --- /model/allocation ---------------------------------------------------------------------


def test_allocation_by_model_sums_the_windows_exactly() -> None:
    windows = MemoryWindows(USAGE, newest_ms=at(2, 59, 59))

    answer = run(make_api(windows).allocation({"window": THREE_HOURS, "aggregate": "model"}))

    assert answer.status == 200 and answer.body["code"] == 200
    [allocation] = answer.body["data"]
    assert sorted(allocation) == ["gpt-4", "llama"]
    gpt4 = dollars(1_234_567_890_123) + dollars(2_000_000_000_001) + dollars(999_999_999_999)
    assert exact(allocation["gpt-4"], "totalCostExact") == gpt4 == Decimal("4.234567890123")
    assert allocation["gpt-4"]["totalCost"] == float(gpt4)
    assert exact(allocation["llama"], "totalCostExact") == dollars(7)
    assert (allocation["gpt-4"]["requests"], allocation["gpt-4"]["inputTokens"]) == (8, 301)
    assert allocation["gpt-4"]["window"] == {"start": "2024-05-01T00:00:00Z",
                                             "end": "2024-05-01T03:00:00Z"}
    # Three whole hours: the hourly windows, not 180 minute windows.
    assert sorted(windows.tiles_read) == sorted(USAGE)


def test_allocation_by_label_and_the_default_aggregate() -> None:
    windows = MemoryWindows(USAGE, newest_ms=at(2, 59, 59))
    api = make_api(windows)

    by_team = run(api.allocation({"window": THREE_HOURS, "aggregate": "label:team"}))
    by_namespace = run(api.allocation({"window": THREE_HOURS}))

    teams = by_team.body["data"][0]
    assert exact(teams["search"], "totalCostExact") == dollars(3_234_567_890_124)
    assert exact(teams["ads"], "totalCostExact") == dollars(999_999_999_999 + 7)
    assert list(by_namespace.body["data"][0]) == ["ml-prod"]
    assert exact(by_namespace.body["data"][0]["ml-prod"], "totalCostExact") == dollars(
        1_234_567_890_123 + 7 + 2_000_000_000_001 + 999_999_999_999)


def test_allocation_steps_give_one_set_per_hour_and_accumulate_sums_them() -> None:
    api = make_api(MemoryWindows(USAGE, newest_ms=at(2, 59, 59)))
    query = {"window": THREE_HOURS, "aggregate": "model", "step": "1h"}

    stepped = run(api.allocation(query))
    accumulated = run(api.allocation({**query, "accumulate": "true"}))

    sets = stepped.body["data"]
    assert [exact(s["gpt-4"], "totalCostExact") for s in sets] == [
        dollars(1_234_567_890_123), dollars(2_000_000_000_001), dollars(999_999_999_999)]
    assert [s["gpt-4"]["window"]["start"] for s in sets] == [
        "2024-05-01T00:00:00Z", "2024-05-01T01:00:00Z", "2024-05-01T02:00:00Z"]
    [whole] = accumulated.body["data"]
    assert exact(whole["gpt-4"], "totalCostExact") == sum(
        (exact(s["gpt-4"], "totalCostExact") for s in sets), Decimal(0))


def test_an_empty_window_answers_no_set_and_steps_answer_empty_sets() -> None:
    api = make_api(MemoryWindows(newest_ms=None))

    assert run(api.allocation({})) == JsonAnswer({"code": 200, "data": []})
    stepped = run(api.allocation({"window": THREE_HOURS, "step": "1h"}))
    assert stepped == JsonAnswer({"code": 200, "data": [{}, {}, {}]})


def test_the_default_window_is_the_24_hours_up_to_the_newest_event() -> None:
    windows = MemoryWindows(USAGE, newest_ms=at(2, 30, 10))

    [allocation] = run(make_api(windows).allocation({"aggregate": "model"})).body["data"]

    # Relative windows end where the finest (1-minute) window holding the newest event ends.
    assert allocation["gpt-4"]["window"] == {"start": "2024-04-30T02:31:00Z",
                                             "end": "2024-05-01T02:31:00Z"}
    # The hour starting 02:00 is only half inside, so it is read as minutes, which are empty.
    assert exact(allocation["gpt-4"], "totalCostExact") == dollars(
        1_234_567_890_123 + 2_000_000_000_001)


def test_gpu_cost_is_shared_by_tokens_and_idle_kept_apart_by_default() -> None:
    # One GPU hour at $3/h, busy half of it: $1.50 busy shared among its model's users by
    # tokens (search 150, ads 300) and $1.50 idle as its own row.
    rows = WindowRows(
        {dims("gpt-4"): UsageSums(0, 100, 50, requests=1),
         dims("gpt-4", "ads"): UsageSums(0, 240, 60, requests=1)},
        {gpu_dims("gpt-4", 3): GpuSums(3_600_000, 1_800_000, 1_800_000)},
    )
    windows = MemoryWindows({(HOUR_S, at(0)): rows}, newest_ms=at(0, 59))
    one_hour = "2024-05-01T00:00:00Z,2024-05-01T01:00:00Z"
    rate_pico_per_hour = 3 * 10**12
    busy = Decimal(1_800_000 * rate_pico_per_hour) / 3_600_000 / PICO
    idle = Decimal(1_800_000 * rate_pico_per_hour) / 3_600_000 / PICO
    by_team = {"window": one_hour, "aggregate": "label:team"}

    apart = run(make_api(windows).allocation(by_team))
    shared = run(make_api(windows).allocation({**by_team, "shareIdle": "yes"}))
    by_requests = run(make_api(windows, gpu_defaults=AllocationOptions(weight="requests"))
                      .allocation(by_team))
    shared_by_default = run(make_api(windows, gpu_defaults=AllocationOptions(share_idle=True))
                            .allocation(by_team))
    by_tokens_asked = run(make_api(windows, gpu_defaults=AllocationOptions(weight="requests"))
                          .allocation({**by_team, "gpuWeight": "tokens"}))

    teams = apart.body["data"][0]
    assert exact(teams["search"], "totalCostExact") == busy * 150 / 450 == Decimal("0.5")
    assert exact(teams["ads"], "totalCostExact") == busy * 300 / 450
    assert exact(teams["__idle__"], "totalCostExact") == idle
    shared_teams = shared.body["data"][0]
    assert "__idle__" not in shared_teams
    assert exact(shared_teams["search"], "totalCostExact") == (busy + idle) * 150 / 450
    # The server's defaults apply where the query names none, and the query's where it does.
    assert exact(by_requests.body["data"][0]["ads"], "totalCostExact") == busy / 2
    assert by_tokens_asked.body["data"] == apart.body["data"]
    assert shared_by_default.body["data"] == shared.body["data"]


def test_other_costs_are_re_read_and_charged_per_step() -> None:
    # $744 a month is $1 an hour in May (31 days of 24 hours).
    components = {"storage": OtherCost(monthly=((0, 744 * 10**12),))}
    windows = MemoryWindows(USAGE, newest_ms=at(2, 59, 59))
    api = make_api(windows, other_costs=components)

    stepped = run(api.allocation({"window": THREE_HOURS, "aggregate": "model", "step": "1h"}))

    for step in stepped.body["data"]:
        assert sum((exact(row, "otherCostExact") for row in step.values()), Decimal(0)) == 1
    assert run(make_api(windows).allocation({"window": THREE_HOURS})).body["data"][0][
        "ml-prod"].get("otherCostExact") is None


def test_allocation_by_api_key_reads_whole_days_of_the_roll_up() -> None:
    day = MAY_1
    windows = MemoryWindows(
        {(HOUR_S, at(0)): WindowRows({dims("gpt-4"): UsageSums(5 * 10**12, 1, 1, requests=2)})},
        newest_ms=at(0, 30),
        principal_days={("api_key", day): {"key-a": UsageSums(3 * 10**12, 1, 0, requests=1),
                                           "key-b": UsageSums(2 * 10**12, 0, 1, requests=1)}},
    )

    answer = run(make_api(windows).allocation({"aggregate": "api_key", "window": "1d"}))

    [allocation] = answer.body["data"]
    assert exact(allocation["key-a"], "totalCostExact") == 3
    assert exact(allocation["key-b"], "totalCostExact") == 2
    assert allocation["key-a"]["window"] == {"start": "2024-05-01T00:00:00Z",
                                             "end": "2024-05-02T00:00:00Z"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"aggregate": "colour"}, "colour"),
        ({"shareIdle": "maybe"}, "shareIdle must be true or false, not 'maybe'"),
        ({"gpuWeight": "watts"}, "cannot share GPU cost by 'watts'"),
        ({"step": "7x"}, "7x"),
        ({"step": "1h", "accumulate": "sometimes"},
         "accumulate must be true or false, not 'sometimes'"),
        ({"window": "the other day"}, "the other day"),
        ({"window": TOO_LONG}, "window too long for one query"),
        ({"window": THREE_HOURS, "step": "1m", "accumulate": "no"}, ""),
        ({"aggregate": "api_key", "step": "1h"}, "step must be whole days"),
        ({"aggregate": "end_user", "window": "soon"}, "soon"),
    ],
)
def test_bad_allocation_queries_answer_400_naming_the_problem(
    query: dict[str, str], message: str
) -> None:
    windows = MemoryWindows(newest_ms=at(2))

    answer = run(make_api(windows).allocation(query))

    if query.get("step") == "1m":  # 180 one-minute steps are fine: the control case
        assert answer.status == 200 and len(answer.body["data"]) == 180
        return
    assert answer.status == 400
    assert answer.body["code"] == 400 and set(answer.body) == {"code", "message"}
    assert message in answer.body["message"]


def test_a_query_too_long_reads_nothing() -> None:
    windows = MemoryWindows(newest_ms=at(2))

    run(make_api(windows).allocation({"window": TOO_LONG}))

    assert windows.tiles_read == []


# --- /model/gpu ----------------------------------------------------------------------------


def test_gpu_report_costs_the_gpu_hours_by_tier() -> None:
    rows = WindowRows({}, {gpu_dims("gpt-4", 3): GpuSums(7_200_000, 5_400_000, 1_800_000),
                           gpu_dims("llama", 2, "spot"): GpuSums(3_600_000, 3_600_000, 0)})
    windows = MemoryWindows({(HOUR_S, at(0)): rows}, newest_ms=at(0, 59))
    api = make_api(windows)
    one_hour = "2024-05-01T00:00:00Z,2024-05-01T01:00:00Z"

    [report] = run(api.gpu({"window": one_hour})).body["data"]
    stepped = run(api.gpu({"window": one_hour, "step": "30m", "aggregate": "model"}))

    # On-demand at $3/h for 2 GPU hours; the spot row's spot rate is $1/h (see gpu_dims).
    assert report["nvidia-a100-80gb"]["gpuHours"] == 3.0
    assert Decimal(str(report["nvidia-a100-80gb"]["totalCost"])) == Decimal(3 * 2 + 1 * 1)
    assert Decimal(str(report["nvidia-a100-80gb"]["idleCost"])) == Decimal("1.5")
    # Half-hour steps of a window held only as an hourly window read the empty minutes.
    assert stepped == JsonAnswer({"code": 200, "data": [{}, {}]})


def test_gpu_with_no_rows_answers_no_set() -> None:
    assert run(make_api().gpu({})) == JsonAnswer({"code": 200, "data": []})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"aggregate": "colour"}, "colour"),
        ({"step": "7x"}, "7x"),
        ({"window": "the other day"}, "the other day"),
        ({"window": "the other day", "step": "1h"}, "the other day"),
        ({"window": TOO_LONG}, "window too long for one query"),
    ],
)
def test_bad_gpu_queries_answer_400(query: dict[str, str], message: str) -> None:
    answer = run(make_api(MemoryWindows(newest_ms=at(2))).gpu(query))

    assert answer.status == 400 and answer.body["code"] == 400
    assert message in answer.body["message"]


# --- /api/budgets, /api/alerts ---------------------------------------------------------------


def test_budgets_and_alerts_pass_the_view_through_with_its_evaluation_time() -> None:
    budgets = [{"name": "search", "status": "OK", "spend": "12.5"}]
    alerts = [{"alert_id": "a1", "rule": "budget"}]
    api = make_api(alerts=MemoryAlerts(budgets, alerts, evaluated_ms=at(1, 2, 3)))

    assert run(api.budgets()) == JsonAnswer(
        {"code": 200, "data": budgets, "evaluatedAt": "2024-05-01T01:02:03+00:00"})
    assert run(api.alerts()) == JsonAnswer(
        {"code": 200, "data": alerts, "evaluatedAt": "2024-05-01T01:02:03+00:00"})


def test_before_the_first_evaluation_evaluated_at_is_null() -> None:
    api = make_api()

    assert run(api.budgets()) == JsonAnswer({"code": 200, "data": [], "evaluatedAt": None})
    assert run(api.alerts()) == JsonAnswer({"code": 200, "data": [], "evaluatedAt": None})


# --- /api/advice -------------------------------------------------------------------------------


def test_advice_extrapolates_the_measured_hours_to_a_month() -> None:
    prices_asked: list[tuple[str, int]] = []

    def price(model: str, ts_ms: int) -> ModelPrice | None:
        prices_asked.append((model, ts_ms))
        return None

    # The oldest minute window held marks where data begins.
    windows = MemoryWindows({**USAGE, (MINUTE_S, at(0)): WindowRows()}, newest_ms=at(2, 59, 59))
    api = make_api(windows, advice=AdviceInputs(Assumptions(month_days=30), price))

    answer = run(api.advice({"window": THREE_HOURS}))

    data = answer.body["data"]
    assert answer.status == 200 and answer.body["code"] == 200
    assert data["window"] == {"start": "2024-05-01T00:00:00Z", "end": "2024-05-01T03:00:00Z"}
    spent = dollars(1_234_567_890_123 + 7 + 2_000_000_000_001 + 999_999_999_999)
    assert Decimal(data["currentMonthlyCostExact"]) == spent * 30 * 24 / 3
    # Prices are those in force at the window's last millisecond.
    assert {ts for _, ts in prices_asked} <= {at(3) - 1}


def test_advice_before_any_data_has_no_window() -> None:
    answer = run(make_api().advice({}))

    assert answer == JsonAnswer({"code": 200, "data": {
        "window": None, "currentMonthlyCost": 0.0, "advice": [], "cacheAchieved": [],
        "roi": []}})


@pytest.mark.parametrize("window", ["the other day", TOO_LONG])
def test_bad_advice_window_answers_400(window: str) -> None:
    windows = MemoryWindows({(MINUTE_S, MAY_1 - 120 * DAY_MS): WindowRows()}, newest_ms=at(2))

    answer = run(make_api(windows).advice({"window": window}))

    assert answer.status == 400 and answer.body["code"] == 400 and answer.body["message"]


# --- probes and /metrics ----------------------------------------------------------------------


def test_probes_answer_200_when_fine_and_503_with_the_reason_when_not() -> None:
    fine = make_api()
    failing = make_api(probes=((False, "usage ingest failed: KafkaException"),
                               (False, "usage ingest waiting for partition assignment")))

    assert fine.healthz() == JsonAnswer({"status": "ok"}, 200)
    assert fine.readyz() == JsonAnswer({"ready": True, "detail": "ok"}, 200)
    assert failing.healthz() == JsonAnswer(
        {"status": "failed", "detail": "usage ingest failed: KafkaException"}, 503)
    assert failing.readyz() == JsonAnswer(
        {"ready": False, "detail": "usage ingest waiting for partition assignment"}, 503)


def test_metrics_exposes_the_registry_it_was_given() -> None:
    registry = CollectorRegistry()
    Counter("demo_events", "Events seen.", registry=registry).inc(3)

    text = make_api(registry=registry).metrics().decode()

    assert "demo_events_total 3.0" in text.splitlines()

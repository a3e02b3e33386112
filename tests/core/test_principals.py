"""aggregate=api_key and end_user: whole UTC days, rows shaped like every other aggregate's,
and a set that adds up to the windows' total, checked against sums worked out with Decimal."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.core.aggregate import PartitionAggregate
from costflux.core.allocation import (
    IDLE,
    UNALLOCATED,
    AllocationOptions,
    AllocationQueryError,
    GroupCost,
    TimeRange,
    allocate,
    allocation_set,
    parse_aggregate,
)
from costflux.core.ingest import Candidate
from costflux.core.principals import (
    day_starts,
    day_step,
    parse_day_window,
    principal_aggregate,
    principal_costs,
)
from costflux.core.rows import GpuSums, UsageSums, WindowRows
from costflux.core.spend import SpendRules, add_spend_rows

DAY = 86_400_000
HOUR = 3_600_000
PICO = Decimal(10) ** 12


def midnight(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) * 1000


#: Wednesday 2024-05-15, 13:20 UTC.
NOW = midnight(2024, 5, 15) + 13 * HOUR + 20 * 60_000
TODAY = midnight(2024, 5, 15)


# --- the aggregate parameter ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "label"), [
    ("api_key", "api_key"), ("end_user", "end_user"), (" label:api_key ", "api_key"),
    ("label:end_user", "end_user"), ("model", None), ("label:team", None), ("namespace", None),
])
def test_a_principal_aggregate_is_named_alone(text: str, label: str | None) -> None:
    assert principal_aggregate(text) == label


@pytest.mark.parametrize("text", ["api_key,model", "model, end_user", "label:api_key,team",
                                  "api_key,end_user"])
def test_a_principal_combined_with_other_dimensions_is_refused(text: str) -> None:
    assert principal_aggregate(text) is None
    with pytest.raises(AllocationQueryError, match=r"alone: its rows are kept per \w+ and UTC"):
        parse_aggregate(text)


def test_the_aggregates_listed_in_errors_include_the_principals() -> None:
    with pytest.raises(AllocationQueryError) as caught:
        parse_aggregate("owner")
    assert "api_key" in str(caught.value) and "end_user" in str(caught.value)


# --- whole UTC days --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "start", "end"), [
    # OpenCost's "past N days": today, midnight to midnight, and the N-1 days before.
    ("1d", TODAY, TODAY + DAY),
    ("7d", TODAY - 6 * DAY, TODAY + DAY),
    ("30d", TODAY - 29 * DAY, TODAY + DAY),
    ("2w", TODAY - 13 * DAY, TODAY + DAY),
    ("today", TODAY, TODAY + DAY),
    ("yesterday", TODAY - DAY, TODAY),
    ("week", midnight(2024, 5, 12), TODAY + DAY),  # from Sunday
    ("lastweek", midnight(2024, 5, 5), midnight(2024, 5, 12)),
    ("month", midnight(2024, 5, 1), TODAY + DAY),
    ("lastmonth", midnight(2024, 4, 1), midnight(2024, 5, 1)),
    ("2024-05-01T00:00:00Z,2024-05-08T00:00:00Z", midnight(2024, 5, 1), midnight(2024, 5, 8)),
    (f"{midnight(2024, 5, 2) // 1000},{midnight(2024, 5, 3) // 1000}", midnight(2024, 5, 2),
     midnight(2024, 5, 3)),
])
def test_windows_are_read_as_whole_utc_days(text: str, start: int, end: int) -> None:
    assert parse_day_window(text, NOW) == TimeRange(start, end)


def test_a_day_window_ending_exactly_at_midnight_is_that_day() -> None:
    assert parse_day_window("1d", TODAY) == TimeRange(TODAY, TODAY + DAY)


@pytest.mark.parametrize(("text", "start", "end"), [
    # Exact instants and sub-day durations: the whole UTC days that hold them.
    ("2024-05-01T12:00:00Z,2024-05-02T00:00:00Z", midnight(2024, 5, 1), midnight(2024, 5, 2)),
    ("2024-05-01T00:00:00Z,2024-05-02T06:00:00Z", midnight(2024, 5, 1), midnight(2024, 5, 3)),
    ("2024-05-01T19:49:00Z,2024-05-01T19:52:00Z", midnight(2024, 5, 1), midnight(2024, 5, 2)),
    ("2024-05-01T23:59:00Z,2024-05-02T00:02:00Z", midnight(2024, 5, 1), midnight(2024, 5, 3)),
    ("90m", TODAY, TODAY + DAY),  # 11:50 to 13:21 today
    ("24h", TODAY - DAY, TODAY + DAY),
    ("14h", TODAY - DAY, TODAY + DAY),
    ("13h", TODAY, TODAY + DAY),
])
def test_a_window_cutting_days_is_widened_to_the_days_holding_it(
    text: str, start: int, end: int,
) -> None:
    assert parse_day_window(text, NOW) == TimeRange(start, end)


@pytest.mark.parametrize("text", ["0", "soon", "2024-05-02T00:00:00Z,2024-05-01T00:00:00Z"])
def test_an_invalid_window_is_refused_as_any_other(text: str) -> None:
    with pytest.raises(AllocationQueryError):
        parse_day_window(text, NOW)


def test_steps_are_whole_days() -> None:
    assert day_step(None) is None
    assert day_step(DAY) == DAY and day_step(7 * DAY) == 7 * DAY
    for step in (HOUR, 36 * HOUR):
        with pytest.raises(AllocationQueryError, match="kept per UTC day: step must be whole days"):
            day_step(step)


def test_day_starts() -> None:
    assert day_starts(TimeRange(TODAY - 2 * DAY, TODAY + DAY)) == [
        TODAY - 2 * DAY, TODAY - DAY, TODAY]


# --- the rows --------------------------------------------------------------------------------

GPT = ("gpt-4", "search", "", "", "prod", "", "")
LLAMA = ("llama", "ads", "", "", "dev", "", "")
#: A whole bill's sums: 3 µ$ contract discount, 7 cache-write tokens, 2 reasoning tokens...
BILLED = UsageSums(2_000_000, 10, 20, 3, 2, 0, 5_000, 0, 0, 3_000_000, 7, 0, 0, 0, 2, 0, 0, 0,
                   0, 0, 11_000, 0, 0, 400_000)


def test_a_keys_row_is_the_row_any_aggregate_builds_of_the_same_usage() -> None:
    """One builder: a key whose usage is one window row answers exactly that row's fields."""
    span = TimeRange(TODAY, TODAY + DAY)
    rows = WindowRows({GPT: BILLED})
    by_key = allocation_set(principal_costs([{"key-a": BILLED}], [rows], AllocationOptions()),
                            span)
    by_model = allocate([rows], [0], span)
    assert set(by_key) == {"key-a"}  # all of the usage is the key's: nothing left over
    assert by_key["key-a"] == {**by_model["gpt-4"], "name": "key-a"}


def test_usage_without_the_label_and_gpu_cost_are_unallocated() -> None:
    span = TimeRange(TODAY, TODAY + DAY)
    gpu_busy = ("node-1", "a100", "on_demand", "prod", "gpt-4", "search", "3600000000000,1,1")
    windows = [
        WindowRows({GPT: UsageSums(5 * 10**12, 100, 50, 0, 3)},
                   {gpu_busy: GpuSums(2 * HOUR, HOUR, HOUR)}),  # $3.6/h: 1 h busy, 1 h idle
        WindowRows({LLAMA: UsageSums(10**12 + 7, 10, 10, 0, 2)}),
    ]
    days = [{"key-a": UsageSums(2 * 10**12, 40, 20, 0, 1)},
            {"key-a": UsageSums(7, 1, 1, 0, 1), "key-b": UsageSums(10**12, 9, 9, 0, 1)}]
    answer = allocation_set(principal_costs(days, windows, AllocationOptions()), span)
    assert set(answer) == {"key-a", "key-b", UNALLOCATED, IDLE}
    exact = {name: Decimal(row["totalCostExact"]) for name, row in answer.items()}
    assert exact["key-a"] == Decimal("2.000000000007")
    assert exact["key-b"] == Decimal(1)
    # $6.000000000007 of usage less the keys' $3.000000000007, and the busy GPU hour ($3.6).
    assert exact[UNALLOCATED] == Decimal(3) + Decimal("3.6")
    assert exact[UNALLOCATED] - Decimal(answer[UNALLOCATED]["tokenCostExact"]) == Decimal("3.6")
    assert answer[UNALLOCATED]["gpuCost"] == 3.6
    assert answer[UNALLOCATED]["requests"] == 2 and answer[UNALLOCATED]["inputTokens"] == 60
    assert exact[IDLE] == Decimal("3.6")
    assert answer["key-a"]["gpuCost"] == 0.0
    # The set totals what the windows hold, however they are grouped.
    by_team = allocate(windows, [1], span)
    assert sum(exact.values()) == sum(Decimal(r["totalCostExact"]) for r in by_team.values())
    shared = allocation_set(principal_costs(days, windows, AllocationOptions(share_idle=True)),
                            span)
    assert IDLE not in shared
    assert Decimal(shared[UNALLOCATED]["totalCostExact"]) == exact[UNALLOCATED] + exact[IDLE]


def test_days_the_windows_no_longer_hold_leave_only_gpu_cost_over() -> None:
    """Windows kept fewer days than the roll-up: the keys' rows stand; no negative remainder."""
    span = TimeRange(TODAY, TODAY + DAY)
    answer = allocation_set(principal_costs([{"key-a": UsageSums(10, 1, 1, 0, 1)}],
                                            [WindowRows()], AllocationOptions()), span)
    assert set(answer) == {"key-a"}
    assert answer["key-a"]["totalCostExact"] == "0.000000000010"


def test_a_group_less_another_and_whether_it_went_below_zero() -> None:
    whole = GroupCost()
    whole.add_usage(BILLED)
    part = GroupCost()
    part.add_usage(BILLED._replace(cost_pico=1_000_000, requests=1))
    whole.add(part, -1)
    assert (whole.token_pico, whole.requests, whole.input_tokens) == (1_000_000, 1, 0)
    assert not whole.negative and whole.billed["contract_discount_pico"] == 0
    whole.add(part, -1)
    assert whole.negative
    whole.add(part)
    assert not whole.negative


# --- through ingest's own roll-ups -----------------------------------------------------------

_EVENT = st.tuples(
    st.integers(0, 3 * DAY - 1),  # ms into the three days
    st.integers(0, 10**16),  # cost in pico-dollars
    st.integers(0, 5000), st.integers(0, 5000),  # input, output tokens
    st.sampled_from(["", "key-a", "key-b", "key/c"]),
    st.sampled_from(["", "u1", "u2"]),
)


@given(st.lists(_EVENT, max_size=60), st.sampled_from(["api_key", "end_user"]))
def test_rows_from_ingests_roll_ups_equal_a_decimal_recomputation(
    events: list[tuple[int, int, int, int, str, str]], label: str,
) -> None:
    """Windows and days as a flush writes them (PartitionAggregate, add_spend_rows); each
    value's row, and __unallocated__, summed here with Decimal from the events themselves."""
    start = TODAY - 3 * DAY
    candidates = [
        Candidate(f"e{i}", str(i), start + at, GPT, cost, tokens_in, tokens_out, 0, 0, 0, None,
                  None, (key, user))
        for i, (at, cost, tokens_in, tokens_out, key, user) in enumerate(events)]
    aggregate = PartitionAggregate(60)
    aggregate.add_all(candidates)
    flush = aggregate.rows([60, 3600])
    add_spend_rows(flush, candidates, SpendRules())
    windows = [WindowRows({dims: UsageSums(*sums) for dims, sums in rows.items()})
               for (size_s, _), rows in flush.usage.items() if size_s == 3600]
    span = TimeRange(start, TODAY)
    days = [{value: UsageSums(*sums)
             for value, sums in flush.principals.get((label, day), {}).items()}
            for day in day_starts(span)]
    answer = allocation_set(principal_costs(days, windows, AllocationOptions()), span)

    expected: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0])
    for _at, cost, tokens_in, tokens_out, key, user in events:
        row = expected[(key if label == "api_key" else user) or UNALLOCATED]
        row[0] += Decimal(cost) / PICO
        row[1] += tokens_in + tokens_out
        row[2] += 1
    assert {name: [Decimal(row["totalCostExact"]), row["inputTokens"] + row["outputTokens"],
                   row["requests"]] for name, row in answer.items()} == dict(expected)
    for row in answer.values():
        assert row["window"] == {"start": "2024-05-12T00:00:00Z", "end": "2024-05-15T00:00:00Z"}

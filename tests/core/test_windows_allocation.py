"""Window assignment, the global watermark, and allocation queries (Kubecost shape)."""

from __future__ import annotations

import calendar
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costflux.core.allocation import (
    MAX_STEPS,
    AllocationQueryError,
    TimeRange,
    allocate,
    cover,
    parse_aggregate,
    parse_step,
    parse_window,
    split_steps,
)
from costflux.core.rows import DimKey, UsageSums, WindowRows
from costflux.core.windows import PartitionMark, global_watermark, window_start

MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
PICO = Decimal(10) ** 12
SIZES_S = (60, 3600, 86400)


def utc_ms(*fields: int) -> int:
    """Epoch milliseconds of a UTC calendar time, by calendar.timegm."""
    return calendar.timegm((*fields, 0, 0, 0)[:9]) * 1000


MAY_1 = utc_ms(2024, 5, 1, 0, 0, 0)

# --- windows -------------------------------------------------------------------------------


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from([1, 60_000, HOUR_MS]))
def test_window_start_is_the_aligned_start_of_the_window_holding_ts(ts: int, size: int) -> None:
    start = window_start(ts, size)
    assert start % size == 0
    assert start <= ts < start + size


@pytest.mark.parametrize(
    ("ts", "size", "start"),
    [
        (MAY_1 + 12 * HOUR_MS + 59_999, HOUR_MS, MAY_1 + 12 * HOUR_MS),
        (MAY_1 + 13 * HOUR_MS, HOUR_MS, MAY_1 + 13 * HOUR_MS),
        (MAY_1 + 23 * HOUR_MS, DAY_MS, MAY_1),  # days are UTC days
        (-1, MINUTE_MS, -MINUTE_MS),
    ],
)
def test_window_start_examples(ts: int, size: int, start: int) -> None:
    assert window_start(ts, size) == start


def mark(watermark: int | None, last_data: int) -> PartitionMark:
    return PartitionMark(watermark_ms=watermark, last_data_wall_ms=last_data)


IDLE_AFTER = 30_000
NOW = 1_000_000


@pytest.mark.parametrize(
    ("marks", "expected"),
    [
        pytest.param({}, None, id="no-partitions"),
        pytest.param({"0": mark(500, NOW)}, 500, id="one"),
        pytest.param({"0": mark(500, NOW), "1": mark(200, NOW - 1)}, 200, id="min-of-active"),
        pytest.param(
            {"0": mark(500, NOW), "1": mark(200, NOW - IDLE_AFTER)}, 500, id="idle-ignored"
        ),
        pytest.param(
            {"0": mark(500, NOW), "1": mark(200, NOW - IDLE_AFTER + 1)},
            200,
            id="just-before-idle-still-holds",
        ),
        pytest.param(
            {"0": mark(500, NOW), "1": mark(None, NOW)}, None, id="active-without-watermark"
        ),
        pytest.param(
            {"0": mark(500, NOW), "1": mark(None, NOW - IDLE_AFTER)},
            500,
            id="idle-without-watermark",
        ),
        pytest.param(
            {"0": mark(500, 0), "1": mark(900, 10), "2": mark(None, 0)}, 900, id="all-idle-max"
        ),
        pytest.param({"0": mark(None, 0)}, None, id="all-idle-none-known"),
    ],
)
def test_global_watermark(marks: dict[str, PartitionMark], expected: int | None) -> None:
    assert global_watermark(marks, NOW, IDLE_AFTER) == expected


@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=15).map(str),
        st.tuples(
            st.one_of(st.none(), st.integers(min_value=-(10**12), max_value=10**12)),
            st.integers(min_value=NOW - 3 * IDLE_AFTER, max_value=NOW),
        ),
        max_size=8,
    )
)
def test_global_watermark_property(raw: dict[str, tuple[int | None, int]]) -> None:
    marks = {k: mark(w, t) for k, (w, t) in raw.items()}
    active = [w for w, t in raw.values() if NOW - t < IDLE_AFTER]
    if active:
        expected = None if None in active else min(w for w in active if w is not None)
    else:
        known = [w for w, _ in raw.values() if w is not None]
        expected = max(known) if known else None
    assert global_watermark(marks, NOW, IDLE_AFTER) == expected


# --- parse_window --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("24h", MAY_1 + 13 * MINUTE_MS - DAY_MS, MAY_1 + 13 * MINUTE_MS),
        ("7d", MAY_1 + 13 * MINUTE_MS - 7 * DAY_MS, MAY_1 + 13 * MINUTE_MS),
        ("90m", MAY_1 + 13 * MINUTE_MS - 90 * MINUTE_MS, MAY_1 + 13 * MINUTE_MS),
        ("2w", MAY_1 + 13 * MINUTE_MS - 14 * DAY_MS, MAY_1 + 13 * MINUTE_MS),
        (" 1h ", MAY_1 + 13 * MINUTE_MS - HOUR_MS, MAY_1 + 13 * MINUTE_MS),
        (
            "2024-04-30T00:00:00Z,2024-05-01T00:00:00Z",
            utc_ms(2024, 4, 30, 0, 0, 0),
            MAY_1,
        ),
        (  # start floors and end ceils to the finest window
            "2024-04-30T10:00:30+02:00, 2024-04-30T11:00:00.001+02:00",
            utc_ms(2024, 4, 30, 8, 0, 0),
            utc_ms(2024, 4, 30, 9, 1, 0),
        ),
        (
            "2024-04-30T00:00:00,2024-04-30T01:00:00",
            utc_ms(2024, 4, 30, 0, 0, 0),
            utc_ms(2024, 4, 30, 1, 0, 0),
        ),  # no offset: UTC
    ],
)
def test_parse_window(text: str, start: int, end: int) -> None:
    now = MAY_1 + 12 * MINUTE_MS + 34_567  # relative windows end at now, ceiled to a minute
    assert parse_window(text, now, 60) == TimeRange(start, end)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "24",
        "24x",
        "h",
        "-1h",
        "tomorrow",
        "lastyear",
        "a,b",
        "2024-05-01T00:00:00Z",
        "2024-05-01T00:00:00Z,2024-05-01T00:00:00Z",
        "2024-05-02T00:00:00Z,2024-05-01T00:00:00Z",
        "2024-05-01T00:00:00Z,2024-05-02T00:00:00Z,2024-05-03T00:00:00Z",
    ],
)
def test_parse_window_refuses_with_a_hint(text: str) -> None:
    with pytest.raises(AllocationQueryError, match=r"24h|RFC 3339|after its start"):
        parse_window(text, MAY_1, 60)


def test_parse_window_error_names_the_parameter_and_every_form() -> None:
    with pytest.raises(AllocationQueryError) as caught:
        parse_window("fortnight", MAY_1, 60)
    message = str(caught.value)
    for form in ("window", "'fortnight'", "today", "yesterday", "week", "lastweek", "month",
                 "lastmonth", "24h", "RFC 3339", "Unix seconds"):
        assert form in message


# Thursday 2024-05-16 13:12:34.567 UTC: relative windows end at 13:13 (minute windows).
THURSDAY = utc_ms(2024, 5, 16, 13, 12, 34) + 567
THURSDAY_END = utc_ms(2024, 5, 16, 13, 13, 0)


@pytest.mark.parametrize(
    ("text", "now", "start", "end"),
    [
        ("today", THURSDAY, utc_ms(2024, 5, 16, 0, 0, 0), THURSDAY_END),
        ("yesterday", THURSDAY, utc_ms(2024, 5, 15, 0, 0, 0), utc_ms(2024, 5, 16, 0, 0, 0)),
        ("week", THURSDAY, utc_ms(2024, 5, 12, 0, 0, 0), THURSDAY_END),  # from Sunday
        ("lastweek", THURSDAY, utc_ms(2024, 5, 5, 0, 0, 0), utc_ms(2024, 5, 12, 0, 0, 0)),
        ("month", THURSDAY, utc_ms(2024, 5, 1, 0, 0, 0), THURSDAY_END),
        ("lastmonth", THURSDAY, utc_ms(2024, 4, 1, 0, 0, 0), utc_ms(2024, 5, 1, 0, 0, 0)),
        (" LastWeek ", THURSDAY, utc_ms(2024, 5, 5, 0, 0, 0), utc_ms(2024, 5, 12, 0, 0, 0)),
        # On Sunday at midnight the week has just begun; its first event is inside.
        ("week", utc_ms(2024, 5, 12, 0, 0, 0), utc_ms(2024, 5, 12, 0, 0, 0),
         utc_ms(2024, 5, 12, 0, 1, 0)),
        ("lastweek", utc_ms(2024, 5, 12, 0, 0, 0), utc_ms(2024, 5, 5, 0, 0, 0),
         utc_ms(2024, 5, 12, 0, 0, 0)),
        # Saturday is still the week that began the Sunday before.
        ("week", utc_ms(2024, 5, 18, 23, 59, 0), utc_ms(2024, 5, 12, 0, 0, 0),
         utc_ms(2024, 5, 19, 0, 0, 0)),
        ("today", utc_ms(2024, 5, 16, 0, 0, 0), utc_ms(2024, 5, 16, 0, 0, 0),
         utc_ms(2024, 5, 16, 0, 1, 0)),
        ("yesterday", utc_ms(2024, 3, 1, 8, 0, 0), utc_ms(2024, 2, 29, 0, 0, 0),
         utc_ms(2024, 3, 1, 0, 0, 0)),  # leap day
        ("lastmonth", utc_ms(2024, 3, 31, 8, 0, 0), utc_ms(2024, 2, 1, 0, 0, 0),
         utc_ms(2024, 3, 1, 0, 0, 0)),
        ("lastmonth", utc_ms(2024, 1, 10, 8, 0, 0), utc_ms(2023, 12, 1, 0, 0, 0),
         utc_ms(2024, 1, 1, 0, 0, 0)),  # across the year
        ("month", utc_ms(2024, 1, 1, 0, 0, 0), utc_ms(2024, 1, 1, 0, 0, 0),
         utc_ms(2024, 1, 1, 0, 1, 0)),
        # A newest event exactly on a window boundary is inside relative windows.
        ("1h", MAY_1, MAY_1 - HOUR_MS + MINUTE_MS, MAY_1 + MINUTE_MS),
        ("1586822400,1586908800", THURSDAY, utc_ms(2020, 4, 14, 0, 0, 0),
         utc_ms(2020, 4, 15, 0, 0, 0)),  # Unix seconds, as Kubecost accepts
    ],
)
def test_parse_window_keywords_are_utc_calendar_ranges(
    text: str, now: int, start: int, end: int
) -> None:
    assert parse_window(text, now, 60) == TimeRange(start, end)


def test_parse_window_keywords_widen_to_the_finest_window() -> None:
    assert parse_window("today", THURSDAY, 3600) == TimeRange(
        utc_ms(2024, 5, 16, 0, 0, 0), utc_ms(2024, 5, 16, 14, 0, 0)
    )


# --- step ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "finest_s", "step"),
    [(None, 60, None), ("", 60, None), ("1h", 60, HOUR_MS), ("1d", 3600, DAY_MS),
     ("90m", 60, 90 * MINUTE_MS), ("2w", 86400, 14 * DAY_MS)],
)
def test_parse_step(text: str | None, finest_s: int, step: int | None) -> None:
    assert parse_step(text, finest_s) == step


@pytest.mark.parametrize(("text", "finest_s"),
                         [("0", 60), ("x", 60), ("1.5h", 60), ("90s", 60), ("30m", 3600)])
def test_parse_step_refuses_with_a_hint(text: str, finest_s: int) -> None:
    with pytest.raises(AllocationQueryError, match=r"invalid step .*1h.*finest window"):
        parse_step(text, finest_s)


def test_split_steps_cuts_at_utc_multiples_of_the_step_and_clips_the_ends() -> None:
    span = TimeRange(MAY_1 + 10 * HOUR_MS + 30 * MINUTE_MS, MAY_1 + 13 * HOUR_MS + 15 * MINUTE_MS)
    assert split_steps(span, HOUR_MS) == [
        TimeRange(MAY_1 + 10 * HOUR_MS + 30 * MINUTE_MS, MAY_1 + 11 * HOUR_MS),
        TimeRange(MAY_1 + 11 * HOUR_MS, MAY_1 + 12 * HOUR_MS),
        TimeRange(MAY_1 + 12 * HOUR_MS, MAY_1 + 13 * HOUR_MS),
        TimeRange(MAY_1 + 13 * HOUR_MS, MAY_1 + 13 * HOUR_MS + 15 * MINUTE_MS),
    ]
    assert split_steps(TimeRange(MAY_1, MAY_1 + 2 * HOUR_MS), HOUR_MS) == [
        TimeRange(MAY_1, MAY_1 + HOUR_MS), TimeRange(MAY_1 + HOUR_MS, MAY_1 + 2 * HOUR_MS)
    ]
    lastweek = parse_window("lastweek", THURSDAY, 60)
    days = split_steps(lastweek, DAY_MS)
    assert [d.start_ms for d in days] == [utc_ms(2024, 5, d, 0, 0, 0) for d in range(5, 12)]
    assert split_steps(lastweek, 30 * DAY_MS) == [lastweek]  # a step longer than the window


@settings(max_examples=100)
@given(st.integers(min_value=-3000, max_value=3000), st.integers(min_value=1, max_value=MAX_STEPS),
       st.sampled_from([MINUTE_MS, 7 * MINUTE_MS, HOUR_MS, DAY_MS]))
def test_split_steps_tile_the_span(start_minutes: int, minutes: int, step: int) -> None:
    span = TimeRange(MAY_1 + start_minutes * MINUTE_MS,
                     MAY_1 + (start_minutes + minutes) * MINUTE_MS)
    steps = split_steps(span, step)
    assert steps[0].start_ms == span.start_ms and steps[-1].end_ms == span.end_ms
    for before, after in zip(steps, steps[1:], strict=False):
        assert before.end_ms == after.start_ms and after.start_ms % step == 0
    assert all(0 < s.end_ms - s.start_ms <= step for s in steps)


def test_split_steps_caps_the_number_of_sets() -> None:
    assert len(split_steps(TimeRange(MAY_1, MAY_1 + MAX_STEPS * HOUR_MS), HOUR_MS)) == MAX_STEPS
    with pytest.raises(AllocationQueryError, match=f"more than {MAX_STEPS} steps"):
        split_steps(TimeRange(MAY_1, MAY_1 + MAX_STEPS * HOUR_MS + MINUTE_MS), HOUR_MS)


# --- cover ---------------------------------------------------------------------------------


def fewest_tiles(start: int, end: int, sizes_ms: list[int]) -> int:
    """Independent: fewest aligned windows tiling [start, end), by dynamic programming."""
    finest = min(sizes_ms)
    steps = (end - start) // finest
    best = [0] + [10**9] * steps
    for i in range(1, steps + 1):
        position = start + i * finest
        for size in sizes_ms:
            begin = position - size
            if begin >= start and begin % size == 0:
                best[i] = min(best[i], best[(begin - start) // finest] + 1)
    return best[steps]


@settings(max_examples=200)
@given(
    st.integers(min_value=-3 * 24 * 60, max_value=3 * 24 * 60),
    st.integers(min_value=0, max_value=4 * 24 * 60),
    st.sampled_from([(60, 3600, 86400), (60, 3600), (300, 3600), (60,), (3600, 86400)]),
)
def test_cover_tiles_the_span_exactly_with_the_largest_aligned_windows(
    start_steps: int, length_steps: int, sizes_s: tuple[int, ...]
) -> None:
    finest = min(sizes_s) * 1000
    start = MAY_1 + start_steps * finest
    end = start + length_steps * finest
    tiles = cover(TimeRange(start, end), sizes_s)
    position = start
    for size_s, tile_start in tiles:
        size = size_s * 1000
        assert size_s in sizes_s
        assert tile_start == position, "tiles are contiguous and disjoint"
        assert tile_start % size == 0, "tiles are aligned"
        for larger in (s * 1000 for s in sizes_s if s > size_s):
            assert not (tile_start % larger == 0 and tile_start + larger <= end), (
                "a larger window would have fit here"
            )
        position += size
    assert position == end, "tiles cover exactly the span"
    assert len(tiles) == fewest_tiles(start, end, [s * 1000 for s in sizes_s])


def test_cover_example() -> None:
    span = TimeRange(MAY_1 - 2 * MINUTE_MS, MAY_1 + DAY_MS + HOUR_MS + MINUTE_MS)
    assert cover(span, SIZES_S) == [
        (60, MAY_1 - 2 * MINUTE_MS),
        (60, MAY_1 - MINUTE_MS),
        (86400, MAY_1),
        (3600, MAY_1 + DAY_MS),
        (60, MAY_1 + DAY_MS + HOUR_MS),
    ]
    assert cover(TimeRange(MAY_1, MAY_1), SIZES_S) == []


def test_cover_refuses_a_span_not_aligned_to_the_finest_window() -> None:
    with pytest.raises(AllocationQueryError, match="aligned"):
        cover(TimeRange(MAY_1 + 1, MAY_1 + HOUR_MS), SIZES_S)


# --- aggregate parameter -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indexes"),
    [
        ("model", [0]),
        ("namespace", [4]),
        ("label:team", [1]),
        ("label:project", [2]),
        ("label:app", [3]),
        ("model, label:team", [0, 1]),
        ("namespace,label:app,model", [4, 3, 0]),
        ("deployment", [5]),
        ("cluster", [6]),
        ("label:deployment", [5]),
        ("label:cluster", [6]),
        ("cluster,deployment", [6, 5]),
        ("model, cluster, label:team", [0, 6, 1]),
    ],
)
def test_parse_aggregate(text: str, indexes: list[int]) -> None:
    assert parse_aggregate(text) == indexes


@pytest.mark.parametrize(
    "text", ["pod", "label:owner", "", "model,", "node,model", "container", "model,node"]
)
def test_parse_aggregate_error_lists_the_valid_values(text: str) -> None:
    with pytest.raises(AllocationQueryError) as caught:
        parse_aggregate(text)
    message = str(caught.value)
    for valid in ("model", "namespace", "deployment", "cluster", "label:team", "label:project",
                  "label:app"):
        assert valid in message


@pytest.mark.parametrize("text", ["node", "pod", "model,container", "controller"])
def test_parse_aggregate_says_other_kubernetes_dimensions_are_not_recorded(text: str) -> None:
    with pytest.raises(AllocationQueryError,
                       match=r"does not record (node|pod|container|controller)"):
        parse_aggregate(text)


# --- allocate ------------------------------------------------------------------------------


def dims_of(model: str, team: str = "", project: str = "", app: str = "", ns: str = "",
            deployment: str = "", cluster: str = "") -> DimKey:
    return (model, team, project, app, ns, deployment, cluster)


DAY_ROWS = WindowRows({
    dims_of("gpt-4", "search", ns="prod"): UsageSums(3_000_000_000_000, 100, 10, 5, 2),
    dims_of("gpt-4", "", ns="prod"): UsageSums(1, 1, 0, 0, 1),
    dims_of("llama", "ads"): UsageSums(250_000_000_000, 1000, 500, 0, 4),
})
HOUR_ROWS = WindowRows({
    dims_of("gpt-4", "search", ns="prod"): UsageSums(123_456_789_012, 7, 3, 1, 1),
    dims_of("llama", "ads", ns="dev"): UsageSums(0, 0, 0, 0, 1),
})
SPAN = TimeRange(MAY_1, MAY_1 + DAY_MS + HOUR_MS)


def expected_groups(group_by: list[int]) -> dict[str, list[int]]:
    """[cost, input, output, cached, requests] by group, summed by hand from the rows."""
    groups: dict[str, list[int]] = {}
    for rows in (DAY_ROWS, HOUR_ROWS):
        for dims, sums in rows.usage.items():
            name = "/".join(dims[i] if dims[i] else "__unallocated__" for i in group_by)
            current = groups.setdefault(name, [0] * 5)
            for i, value in enumerate(sums[:5]):
                current[i] += value
    return groups


@pytest.mark.parametrize("group_by", [[1], [0], [4], [0, 1], [4, 1, 0]])
def test_allocate_groups_totals_in_kubecost_shape(group_by: list[int]) -> None:
    result = allocate([DAY_ROWS, HOUR_ROWS], group_by, SPAN)
    expected = expected_groups(group_by)
    assert list(result) == sorted(expected)
    for name, (cost, inp, out, cached, requests) in expected.items():
        allocation: dict[str, Any] = result[name]
        assert allocation["name"] == name
        assert allocation["window"] == {
            "start": "2024-05-01T00:00:00Z",
            "end": "2024-05-02T01:00:00Z",
        }
        assert (allocation["start"], allocation["end"]) == (
            "2024-05-01T00:00:00Z",
            "2024-05-02T01:00:00Z",
        )
        assert Decimal(allocation["totalCostExact"]) == Decimal(cost) / PICO
        assert allocation["totalCost"] == pytest.approx(float(Decimal(cost) / PICO), rel=1e-15)
        assert allocation["tokenCost"] == allocation["totalCost"]
        assert (allocation["inputTokens"], allocation["outputTokens"]) == (inp, out)
        assert (allocation["cachedInputTokens"], allocation["requests"]) == (cached, requests)
        assert allocation["costPerRequest"] == pytest.approx(
            float(Decimal(cost) / PICO / requests), rel=1e-12
        )
        tokens = inp + out
        assert allocation["costPerToken"] == (
            pytest.approx(float(Decimal(cost) / PICO / tokens), rel=1e-12) if tokens else 0.0
        )


def test_allocate_reports_empty_dimension_as_unallocated() -> None:
    result = allocate([DAY_ROWS, HOUR_ROWS], [1], SPAN)
    assert set(result) == {"search", "ads", "__unallocated__"}
    assert result["__unallocated__"]["totalCostExact"] == "0.000000000001"
    assert result["search"]["totalCostExact"] == "3.123456789012"
    assert result["ads"]["requests"] == 5
    assert allocate([], [0], SPAN) == {}


def test_rows_without_deployment_or_cluster_group_as_unallocated_beside_rows_with_them() -> None:
    # One team's rows in one window: two without deployment and cluster (two projects), and
    # one with both that holds the only prompt cache saving. Rows written before deployment,
    # cluster or the saving existed decode to such rows (test_rows).
    rows = WindowRows({
        dims_of("gpt-4", "search"): UsageSums(100, 10, 1, 0, 1),
        dims_of("gpt-4", "search", project="p"): UsageSums(200, 20, 2, 0, 2, 0),
        dims_of("gpt-4", "search", deployment="gpt-4-prod", cluster="eu-west-1"):
            UsageSums(400, 40, 4, 8, 4, 0, 7_000_000),
    })
    by_team = allocate([rows], [1], SPAN)
    assert by_team["search"]["totalCostExact"] == "0.000000000700"
    assert by_team["search"]["requests"] == 7
    assert by_team["search"]["cacheSavingsExact"] == "0.000007000000"
    assert by_team["search"]["cacheSavings"] == pytest.approx(7e-6, rel=1e-15)
    by_place = allocate([rows], [6, 5], SPAN)
    assert {name: row["requests"] for name, row in by_place.items()} == {
        "__unallocated__/__unallocated__": 3, "eu-west-1/gpt-4-prod": 4,
    }
    assert by_place["__unallocated__/__unallocated__"]["cacheSavingsExact"] == "0.000000000000"


def window_store(events: list[tuple[int, DimKey, list[int]]]) -> dict[tuple[int, int], WindowRows]:
    """Rows of every window of every size, as the store keeps them: each event in each size."""
    store: dict[tuple[int, int], dict[DimKey, list[int]]] = {}
    for ts, dims, sums in events:
        for size_s in SIZES_S:
            rows = store.setdefault((size_s, window_start(ts, size_s * 1000)), {})
            rows[dims] = [a + b for a, b in zip(rows.get(dims, [0] * 5), sums, strict=True)]
    return {window: WindowRows({dims: UsageSums(*sums) for dims, sums in rows.items()})
            for window, rows in store.items()}


def test_steps_summed_equal_the_accumulated_window() -> None:
    events = [
        (MAY_1 + 5 * MINUTE_MS, dims_of("gpt-4", "search"), [3_000_000_000_000, 100, 10, 5, 2]),
        (MAY_1 + 5 * HOUR_MS, dims_of("gpt-4", ""), [1, 1, 0, 0, 1]),
        (MAY_1 + 23 * HOUR_MS, dims_of("llama", "ads"), [250_000_000_000, 1000, 500, 0, 4]),
        (MAY_1 + DAY_MS + 30_000, dims_of("gpt-4", "search"), [123_456_789_012, 7, 3, 1, 1]),
        (MAY_1 + DAY_MS + HOUR_MS, dims_of("gpt-4", "ads"), [7, 1, 1, 0, 1]),
    ]
    store = window_store(events)
    span = TimeRange(MAY_1, MAY_1 + DAY_MS + HOUR_MS + MINUTE_MS)

    def rows_of(part: TimeRange) -> list[WindowRows]:
        return [store.get(tile, WindowRows()) for tile in cover(part, SIZES_S)]

    accumulated = allocate(rows_of(span), [1], span)
    for step in (HOUR_MS, DAY_MS, 7 * MINUTE_MS):
        sets = [allocate(rows_of(part), [1], part) for part in split_steps(span, step)]
        summed: dict[str, Decimal] = {}
        for step_set in sets:
            for name, row in step_set.items():
                summed[name] = summed.get(name, Decimal(0)) + Decimal(row["totalCostExact"])
        assert summed == {n: Decimal(r["totalCostExact"]) for n, r in accumulated.items()}
    hourly = [allocate(rows_of(part), [1], part) for part in split_steps(span, HOUR_MS)]
    assert len(hourly) == 26 and sum(1 for s in hourly if s) == 5  # one per event
    assert hourly[-1] == {"ads": hourly[-1]["ads"]}
    assert hourly[-1]["ads"]["totalCostExact"] == "0.000000000007"
    assert hourly[-1]["ads"]["window"] == {"start": "2024-05-02T01:00:00Z",
                                           "end": "2024-05-02T01:01:00Z"}

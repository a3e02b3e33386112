"""Judging a partition's messages and pre-aggregating a flush, against Decimal recomputations."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costflux.core.aggregate import FlushRows, PartitionAggregate, Window, by_window
from costflux.core.allocation import TimeRange, allocate, cover, parse_aggregate
from costflux.core.bill import BILL_FIELDS
from costflux.core.events import Rejected
from costflux.core.ingest import Candidate, IngestRules, Judged, PartitionClock, aggregate, judge
from costflux.core.pricing_file import parse_pricing_text
from costflux.core.rows import DIMENSIONS, DimKey, UsageSums, WindowRows
from costflux.schemas.deadletter import DeadLetterReason as R
from costflux.schemas.usage import UsageEvent
from tests.core.test_rows import stored_windows

PRICES = parse_pricing_text(
    """
model_costs:
  m:
    input_tokens: 0.001
    output_tokens: 0.002
    cached_input_tokens: 0.0005
  big:
    input_per_1m: 15
    output_per_1m: 75
"""
)
#: $/token, written independently of the code under test: (input, output, cached input).
DOLLARS_PER_TOKEN = {
    "m": (Decimal("0.001") / 1000, Decimal("0.002") / 1000, Decimal("0.0005") / 1000),
    "big": (Decimal(15) / 10**6, Decimal(75) / 10**6, Decimal(15) / 10**6),
}
PICO = Decimal(10) ** 12
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
BASE_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z, a multiple of a day
NOW_MS = BASE_MS + 2 * DAY_MS
RULES = IngestRules(window_sizes_s=(60, 3600), allowed_lateness_ms=30_000, max_future_ms=300_000)
SIZES_S = (60, 3600, 86400)


def event(
    event_id: str = "e",
    ts_ms: int = BASE_MS,
    model: str = "m",
    input_tokens: int = 100,
    output_tokens: int = 10,
    cached: int = 0,
    labels: dict[str, str] | None = None,
    deployment: str | None = None,
) -> dict[str, Any]:
    """A usage event with ts written as exact RFC 3339 (no float epoch rounding)."""
    moment = EPOCH + timedelta(milliseconds=ts_ms)
    document = {
        "event_id": event_id,
        "ts": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached,
        "labels": labels or {},
    }
    if deployment is not None:
        document["deployment"] = deployment
    return document


def raw(document: object) -> bytes:
    return json.dumps(document).encode()


def dollars(ev: dict[str, Any]) -> Decimal:
    p_in, p_out, p_cached = DOLLARS_PER_TOKEN[ev["model"]]
    cached = ev["cached_input_tokens"]
    return (ev["input_tokens"] - cached) * p_in + cached * p_cached + ev["output_tokens"] * p_out


def saving_dollars(ev: dict[str, Any]) -> Decimal:
    """What the cache saved: the cached tokens at the input price less at the cached price."""
    p_in, _, p_cached = DOLLARS_PER_TOKEN[ev["model"]]
    return ev["cached_input_tokens"] * (p_in - p_cached)


def served(ev: dict[str, Any]) -> bool:
    """Whether the model served the request (a semantic cache hit was answered without it)."""
    return not ev.get("cache_hit", False)


def dimension_values(ev: dict[str, Any]) -> dict[str, str]:
    """The event's dimensions by the documented rule: deployment is the field, else the label."""
    labels = ev["labels"]
    return {
        "model": ev["model"],
        **{key: labels.get(key, "") for key in ("team", "project", "app", "namespace")},
        "deployment": ev.get("deployment") or labels.get("deployment", ""),
        "cluster": labels.get("cluster", ""),
    }


def dimensions_of(ev: dict[str, Any]) -> tuple[str, ...]:
    """The event's row key dimensions, in the documented order."""
    values = dimension_values(ev)
    return tuple(values[name] for name in (
        "model", "team", "project", "app", "namespace", "deployment", "cluster"))


def reasons(judged: Judged) -> list[tuple[int, R, int | None]]:
    return [(offset, r.reason, r.batch_index) for offset, r in judged.rejected]


# --- lateness ------------------------------------------------------------------------------

EVENT_TS = BASE_MS + 10 * MINUTE_MS + 17_123  # in the minute window ending at BASE + 11 min
EVENT_WINDOW_END = BASE_MS + 11 * MINUTE_MS


@pytest.mark.parametrize(
    ("watermark_minus_window_end", "late"),
    [(-60_000, False), (-1, False), (0, True), (1, True), (HOUR_MS, True)],
)
def test_late_iff_finest_window_end_is_at_or_before_the_partition_watermark(
    watermark_minus_window_end: int, late: bool
) -> None:
    max_ts = EVENT_WINDOW_END + watermark_minus_window_end + RULES.allowed_lateness_ms
    clock = PartitionClock(max_ts_ms=max_ts)
    judged = judge([(7, raw(event(ts_ms=EVENT_TS)))], clock, PRICES, RULES, NOW_MS)
    if late:
        assert reasons(judged) == [(7, R.LATE, None)]
        assert judged.candidates == []
    else:
        assert judged.rejected == []
        assert [c.ts_ms for c in judged.candidates] == [EVENT_TS]
    assert clock.max_ts_ms == max_ts  # an older event never moves the clock back


def test_lateness_is_judged_per_partition() -> None:
    ahead, behind = PartitionClock(), PartitionClock()
    an_hour_later = [(0, raw(event("a", BASE_MS + HOUR_MS)))]
    lagging = [(i, raw(event(f"b{i}", BASE_MS + i * MINUTE_MS))) for i in range(5)]
    assert not judge(an_hour_later, ahead, PRICES, RULES, NOW_MS).rejected
    on_own_clock = judge(lagging, behind, PRICES, RULES, NOW_MS)
    assert on_own_clock.rejected == []
    assert len(on_own_clock.candidates) == 5
    assert behind.max_ts_ms == BASE_MS + 4 * MINUTE_MS
    # The same events judged against the partition that is an hour ahead would all be late.
    on_other_clock = judge(lagging, ahead, PRICES, RULES, NOW_MS)
    assert [r for _, r, _ in reasons(on_other_clock)] == [R.LATE] * 5


def test_clock_advances_only_with_accepted_events() -> None:
    clock = PartitionClock()
    messages = [
        (0, raw(event("future", NOW_MS + RULES.max_future_ms + 1))),
        (1, raw(event("unknown", BASE_MS + DAY_MS, model="gpt-9"))),
        (2, raw(event("bad", BASE_MS + DAY_MS, input_tokens=-5))),
        (3, b"not json"),
    ]
    judged = judge(messages, clock, PRICES, RULES, NOW_MS)
    assert reasons(judged) == [
        (0, R.FUTURE_TIMESTAMP, None),
        (1, R.UNKNOWN_MODEL, None),
        (2, R.NEGATIVE_VALUE, None),
        (3, R.BAD_JSON, None),
    ]
    assert clock.max_ts_ms is None
    judge([(4, raw(event("ok", BASE_MS)))], clock, PRICES, RULES, NOW_MS)
    assert clock.max_ts_ms == BASE_MS


@pytest.mark.parametrize(("ahead_ms", "future"), [(300_000, False), (300_001, True)])
def test_future_timestamp_limit_is_inclusive(ahead_ms: int, future: bool) -> None:
    judged = judge(
        [(0, raw(event(ts_ms=NOW_MS + ahead_ms)))], PartitionClock(), PRICES, RULES, NOW_MS
    )
    assert reasons(judged) == ([(0, R.FUTURE_TIMESTAMP, None)] if future else [])


def test_positions_offsets_batch_indexes_and_originals() -> None:
    single = raw(event("s", BASE_MS + HOUR_MS))
    late_element = event("late", BASE_MS, labels={"team": "x"})
    batch = raw(
        [
            event("b0", BASE_MS + HOUR_MS, labels={"team": "search", "namespace": "prod"}),
            {"event_id": "b1"},
            late_element,
            event("b3", BASE_MS + HOUR_MS + 1, model="nope"),
            event("b4", BASE_MS + HOUR_MS + 2, labels={"project": "p", "app": "a"}),
        ]
    )
    judged = judge([(41, single), (42, batch)], PartitionClock(), PRICES, RULES, NOW_MS)
    assert [(c.event_id, c.position) for c in judged.candidates] == [
        ("s", "41"),
        ("b0", "42:0"),
        ("b4", "42:4"),
    ]
    assert judged.candidates[1].dims == ("m", "search", "", "", "prod", "", "")
    assert judged.candidates[2].dims == ("m", "", "p", "a", "", "", "")
    assert dict(zip(DIMENSIONS, judged.candidates[0].dims, strict=True))["model"] == "m"
    assert reasons(judged) == [(42, R.MISSING_FIELD, 1), (42, R.LATE, 2), (42, R.UNKNOWN_MODEL, 3)]
    # a rejected batch element carries that element, not the whole batch
    late = judged.rejected[1][1]
    assert UsageEvent.model_validate_json(late.original) == UsageEvent.model_validate(late_element)
    # a rejected single message carries the message byte for byte
    alone = judge([(9, single)], PartitionClock(BASE_MS + DAY_MS), PRICES, RULES, NOW_MS)
    assert alone.rejected[0][1].original == single


def test_deployment_is_the_field_else_the_label_and_cluster_is_a_label() -> None:
    messages = [
        (0, raw(event("field", labels={"deployment": "label-d", "cluster": "eu"},
                      deployment="field-d"))),
        (1, raw(event("label", labels={"deployment": "label-d"}))),
        (2, raw(event("neither", labels={"team": "t", "cluster": "us"}))),
    ]
    judged = judge(messages, PartitionClock(), PRICES, RULES, NOW_MS)
    assert [c.dims for c in judged.candidates] == [
        ("m", "", "", "", "", "field-d", "eu"),
        ("m", "", "", "", "", "label-d", ""),
        ("m", "t", "", "", "", "", "us"),
    ]


def test_each_candidate_carries_what_the_prompt_cache_saved() -> None:
    messages = [
        # m: input $0.001/1K, cached $0.0005/1K: 400 cached tokens save 400 x $0.0000005
        (0, raw(event("cached", input_tokens=1000, cached=400))),
        (1, raw(event("uncached", input_tokens=1000))),
        (2, raw(event("no-cache-price", model="big", input_tokens=1000, cached=400))),
    ]
    judged = judge(messages, PartitionClock(), PRICES, RULES, NOW_MS)
    assert [c.cache_saving_pico for c in judged.candidates] == [200_000_000, 0, 0]
    assert Decimal(200_000_000) / PICO == Decimal("0.0002")


def test_candidates_carry_every_dimension_and_every_sum_a_row_holds() -> None:
    # How older rows (fewer dimensions or sums) read is tested in test_rows.
    assert DIMENSIONS == ("model", "team", "project", "app", "namespace", "deployment",
                          "cluster")
    assert UsageSums._fields == (
        "cost_pico", "input_tokens", "output_tokens", "cached_input_tokens", "requests",
        "gpu_ms", "cache_saving_pico", "semantic_cache_hits", "semantic_saving_pico",
        *BILL_FIELDS)


# --- a model of judge, property-tested -----------------------------------------------------

EVENT_SPECS = st.tuples(
    st.integers(min_value=-3 * HOUR_MS, max_value=3 * HOUR_MS),  # time around BASE + 1 day
    st.sampled_from(["m", "m", "big", "unknown"]),
    st.integers(min_value=0, max_value=10_000_000),
    st.integers(min_value=0, max_value=10_000_000),
    st.integers(min_value=0, max_value=10_000_000),
)


def build_events(specs: list[tuple[int, str, int, int, int]]) -> list[dict[str, Any]]:
    return [
        event(f"id{i}", BASE_MS + DAY_MS + dt, model, inp, out, min(cached, inp))
        for i, (dt, model, inp, out, cached) in enumerate(specs)
    ]


def group_into_messages(
    events: list[dict[str, Any]], sizes: list[int]
) -> list[tuple[int, bytes, list[dict[str, Any]], bool]]:
    """Split events into messages: size 0 means a single event, n>0 a batch of up to n."""
    messages, position, offset = [], 0, 100
    for size in sizes:
        if position >= len(events):
            break
        if size == 0:
            messages.append((offset, raw(events[position]), [events[position]], False))
            position += 1
        else:
            chunk = events[position : position + size]
            messages.append((offset, raw(chunk), chunk, True))
            position += size
        offset += 1
    for ev in events[position:]:
        messages.append((offset, raw(ev), [ev], False))
        offset += 1
    return messages


def expected_verdicts(
    messages: list[tuple[int, bytes, list[dict[str, Any]], bool]],
    ts_of: dict[str, int],
    max_ts: int | None,
    lateness_ms: int,
    finest_ms: int,
    future_limit: int,
) -> tuple[list[tuple[str, str, int, Decimal]], list[tuple[int, R, int | None]], int | None]:
    accepted, rejected = [], []
    for offset, _, evs, batched in messages:
        for index, ev in enumerate(evs):
            ts = ts_of[ev["event_id"]]
            where = index if batched else None
            if ts > future_limit:
                rejected.append((offset, R.FUTURE_TIMESTAMP, where))
            elif ev["model"] not in DOLLARS_PER_TOKEN:
                rejected.append((offset, R.UNKNOWN_MODEL, where))
            elif max_ts is not None and (ts // finest_ms + 1) * finest_ms <= max_ts - lateness_ms:
                rejected.append((offset, R.LATE, where))
            else:
                max_ts = ts if max_ts is None else max(max_ts, ts)
                position = f"{offset}:{index}" if batched else str(offset)
                accepted.append((ev["event_id"], position, ts, dollars(ev)))
    return accepted, rejected, max_ts


@settings(max_examples=60, deadline=None)
@given(
    st.lists(EVENT_SPECS, min_size=1, max_size=25),
    st.lists(st.integers(min_value=0, max_value=4), max_size=10),
    st.sampled_from([0, 30_000, 10 * MINUTE_MS]),
    st.one_of(st.none(), st.integers(min_value=-4 * HOUR_MS, max_value=4 * HOUR_MS)),
    st.integers(min_value=0, max_value=6 * HOUR_MS),
)
def test_judge_matches_an_independent_model(
    specs: list[tuple[int, str, int, int, int]],
    sizes: list[int],
    lateness_ms: int,
    clock_start: int | None,
    future_ms: int,
) -> None:
    events = build_events(specs)
    ts_of = {ev["event_id"]: BASE_MS + DAY_MS + s[0] for ev, s in zip(events, specs, strict=True)}
    messages = group_into_messages(events, sizes)
    rules = IngestRules((60, 3600), lateness_ms, future_ms)
    now = BASE_MS + DAY_MS
    start = None if clock_start is None else BASE_MS + DAY_MS + clock_start
    clock = PartitionClock(start)
    judged = judge([(o, v) for o, v, _, _ in messages], clock, PRICES, rules, now)
    accepted, rejected, max_ts = expected_verdicts(
        messages, ts_of, start, lateness_ms, 60_000, now + future_ms
    )
    got = [
        (c.event_id, c.position, c.ts_ms, Decimal(c.cost_pico) / PICO) for c in judged.candidates
    ]
    assert got == accepted
    assert reasons(judged) == rejected
    assert clock.max_ts_ms == max_ts

    # judging the same messages in two runs on the same clock gives the same verdicts
    cut = len(messages) // 2
    clock2 = PartitionClock(start)
    first = judge([(o, v) for o, v, _, _ in messages[:cut]], clock2, PRICES, rules, now)
    second = judge([(o, v) for o, v, _, _ in messages[cut:]], clock2, PRICES, rules, now)
    assert first.candidates + second.candidates == judged.candidates
    assert reasons(first) + reasons(second) == reasons(judged)
    assert clock2.max_ts_ms == max_ts


# --- aggregation ---------------------------------------------------------------------------

TEAMS = ["", "search", "ads"]
NAMESPACES = ["", "prod", "dev"]
#: (the event's deployment field, its deployment label): the field wins over the label.
DEPLOYMENTS = [(None, ""), ("m-prod", ""), (None, "m-canary"), ("m-prod", "m-canary")]
CLUSTERS = ["", "us-east-1", "eu-west-1"]
AGG_SPECS = st.tuples(
    st.integers(min_value=0, max_value=2 * DAY_MS + 5 * HOUR_MS),
    st.sampled_from(["m", "big"]),
    st.integers(min_value=0, max_value=10_000_000),
    st.integers(min_value=0, max_value=10_000_000),
    st.integers(min_value=0, max_value=10_000_000),
    st.sampled_from(TEAMS),
    st.sampled_from(NAMESPACES),
    st.sampled_from(DEPLOYMENTS),
    st.sampled_from(CLUSTERS),
    st.booleans(),  # a semantic cache hit
)
EVERYTHING_ON_TIME = IngestRules(SIZES_S, allowed_lateness_ms=10**13, max_future_ms=10**13)


def agg_events(specs: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    out = []
    for i, (dt, model, inp, out_tokens, cached, team, ns, (field, label), cluster,
            hit) in enumerate(specs):
        labels = {k: v for k, v in (("team", team), ("namespace", ns), ("deployment", label),
                                    ("cluster", cluster)) if v}
        ev = event(f"a{i}", BASE_MS + dt, model, inp, out_tokens, min(cached, inp), labels, field)
        if hit:
            ev["cache_hit"] = True
        if i % 3 == 0:
            ev["gpu_seconds"] = 0.125 * i  # events may carry their own GPU time
        out.append(ev)
    return out


def candidates_of(events: list[dict[str, Any]]) -> list[Candidate]:
    judged = judge(
        [(i, raw(ev)) for i, ev in enumerate(events)],
        PartitionClock(),
        PRICES,
        EVERYTHING_ON_TIME,
        NOW_MS,
    )
    assert judged.rejected == []
    return judged.candidates


def recompute(
    events: list[dict[str, Any]], ts_of: dict[str, int], size_s: int
) -> dict[tuple[int, tuple[str, ...]], list[Any]]:
    """Per (window start, dims): [dollars, input, output, cached, requests, gpu_ms, saved
    dollars, semantic cache hits, dollars they avoided], plain Python. A hit is a request
    served with no cost, tokens or GPU time; what it would have cost is the avoided sum."""
    groups: dict[tuple[int, tuple[str, ...]], list[Any]] = defaultdict(
        lambda: [Decimal(0), 0, 0, 0, 0, 0, Decimal(0), 0, Decimal(0)]
    )
    for ev in events:
        ts = ts_of[ev["event_id"]]
        sums = groups[((ts // (size_s * 1000)) * size_s * 1000, dimensions_of(ev))]
        sums[4] += 1
        if not served(ev):
            sums[7] += 1
            sums[8] += dollars(ev)
            continue
        sums[0] += dollars(ev)
        sums[1] += ev["input_tokens"]
        sums[2] += ev["output_tokens"]
        sums[3] += ev["cached_input_tokens"]
        sums[5] += int(Decimal(str(ev.get("gpu_seconds", 0))) * 1000)
        sums[6] += saving_dollars(ev)
    return dict(groups)


def flatten(flush: FlushRows, size_s: int) -> dict[tuple[int, tuple[str, ...]], list[Any]]:
    """A flush's usage rows of one window size as {(start, dims): [dollars, input, ...]}."""
    out: dict[tuple[int, tuple[str, ...]], list[Any]] = {}
    for (window_size_s, start_ms), rows in flush.usage.items():
        if window_size_s != size_s:
            continue
        for dims, sums in rows.items():
            out[(start_ms, dims)] = [
                Decimal(sums[0]) / PICO, *sums[1:6], Decimal(sums[6]) / PICO, sums[7],
                Decimal(sums[8]) / PICO,
            ]
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(AGG_SPECS, min_size=1, max_size=30))
def test_flush_rows_equal_decimal_recomputation_for_every_window_size(
    specs: list[tuple[Any, ...]],
) -> None:
    events = agg_events(specs)
    ts_of = {ev["event_id"]: BASE_MS + spec[0] for ev, spec in zip(events, specs, strict=True)}
    flush = aggregate(candidates_of(events), 60).rows(SIZES_S)
    assert flush.gpu == {}  # usage events add usage rows only
    for (size_s, start_ms), rows in flush.usage.items():
        assert size_s in SIZES_S
        assert start_ms % (size_s * 1000) == 0
        assert rows, "no empty windows"
        for sums in rows.values():
            # Plain requests leave the whole bill's sums out (they read as 0).
            assert len(sums) == len(UsageSums._fields) - len(BILL_FIELDS)
    hits = [ev for ev in events if not served(ev)]
    total_dollars = sum((dollars(ev) for ev in events if served(ev)), Decimal(0))
    totals = [
        sum(ev[f] for ev in events if served(ev))
        for f in ("input_tokens", "output_tokens", "cached_input_tokens")
    ]
    avoided = sum((dollars(ev) for ev in hits), Decimal(0))
    for size_s in SIZES_S:
        flat = flatten(flush, size_s)
        assert flat == recompute(events, ts_of, size_s)
        sums = [sum(row[i] for row in flat.values()) for i in (0, 1, 2, 3, 4, 7, 8)]
        assert sums == [total_dollars, *totals, len(events), len(hits), avoided]
    # The finest windows hold every counted event exactly once (what "now" is taken from).
    assert sum(row[4] for _, row in flush.finest_usage(60)) == len(events)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(AGG_SPECS, min_size=1, max_size=30),
    st.randoms(use_true_random=False),
    st.integers(min_value=0, max_value=30),
)
def test_shuffling_or_splitting_candidates_gives_the_same_rows(
    specs: list[tuple[Any, ...]], rng: random.Random, cut: int
) -> None:
    candidates = candidates_of(agg_events(specs))
    whole = aggregate(candidates, 60).rows(SIZES_S)
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    assert aggregate(shuffled, 60).rows(SIZES_S) == whole
    # A flush cut in two (the rest goes in the next flush) adds to every window what the
    # whole flush would have: the store just adds the two flushes' rows.
    added: dict[Window, dict[DimKey, list[int]]] = {}
    for part in (candidates[:cut], candidates[cut:]):
        for window, rows in aggregate(part, 60).rows(SIZES_S).usage.items():
            held = added.setdefault(window, {})
            for dims, sums in rows.items():
                before = held.get(dims, [0] * len(sums))
                held[dims] = [a + b for a, b in zip(before, sums, strict=True)]
    assert added == whole.usage
    # Hours and days summed from the minutes equal the events summed straight into hours.
    hourly = aggregate(candidates, 3600).rows((3600, 86400)).usage
    assert hourly == {window: rows for window, rows in whole.usage.items() if window[0] >= 3600}


AGGREGATES = {  # the query's aggregate -> the dimensions it names, written out by hand
    "deployment": ("deployment",),
    "cluster": ("cluster",),
    "cluster,deployment": ("cluster", "deployment"),
    "label:deployment,label:cluster": ("deployment", "cluster"),
    "model,cluster,label:team": ("model", "cluster", "team"),
}
#: A span with ragged ends, so minute, hour and day windows all tile it.
AGG_SPAN = TimeRange(BASE_MS + 37 * MINUTE_MS, BASE_MS + 2 * DAY_MS + 4 * HOUR_MS + 11 * MINUTE_MS)


@settings(max_examples=40, deadline=None)
@given(st.lists(AGG_SPECS, min_size=1, max_size=30), st.sampled_from(sorted(AGGREGATES)))
def test_allocation_by_deployment_and_cluster_equals_a_recomputation_from_the_events(
    specs: list[tuple[Any, ...]], aggregate_text: str
) -> None:
    events = agg_events(specs)
    windows = stored_windows(aggregate(candidates_of(events), 60).rows(SIZES_S))
    allocated = allocate([windows.get(tile, WindowRows()) for tile in cover(AGG_SPAN, SIZES_S)],
                         parse_aggregate(aggregate_text), AGG_SPAN)

    expected: dict[str, list[Any]] = defaultdict(
        lambda: [Decimal(0), 0, Decimal(0), 0, Decimal(0), 0])
    for ev, spec in zip(events, specs, strict=True):
        if AGG_SPAN.start_ms <= BASE_MS + spec[0] < AGG_SPAN.end_ms:
            values = dimension_values(ev)
            name = "/".join(values[d] or "__unallocated__" for d in AGGREGATES[aggregate_text])
            expected[name][1] += 1
            if served(ev):
                expected[name][0] += dollars(ev)
                expected[name][2] += saving_dollars(ev)
                expected[name][5] += ev["input_tokens"] + ev["output_tokens"]
            else:
                expected[name][3] += 1
                expected[name][4] += dollars(ev)
    got = {name: [Decimal(row["totalCostExact"]), row["requests"],
                  Decimal(row["cacheSavingsExact"]), row["semanticCacheHits"],
                  Decimal(row["semanticCacheSavingsExact"]),
                  row["inputTokens"] + row["outputTokens"]]
           for name, row in allocated.items()}
    assert got == expected


def test_larger_windows_are_sums_of_the_finest() -> None:
    totals = PartitionAggregate(60)
    dims = ("m", "t", "", "", "", "m-prod", "eu-west-1")
    totals.add_all([
        Candidate("a", "1", BASE_MS + 59_999, dims, 5, 1, 2, 0, 0, 0, None, None),
        Candidate("b", "2", BASE_MS + 60_000, dims, 7, 3, 4, 1, 250, 3, None, None),
        Candidate("c", "3", BASE_MS + HOUR_MS, dims, 11, 5, 6, 2, 0, 9, None, None),
        Candidate("d", "4", BASE_MS + 60_001, dims, 0, 0, 0, 0, 0, 0, 13, None),  # a semantic hit
    ])
    assert len(totals) == 3
    flush = totals.rows([3600, 60])
    assert flush == FlushRows(usage={
        (60, BASE_MS): {dims: [5, 1, 2, 0, 1, 0, 0, 0, 0]},
        (60, BASE_MS + 60_000): {dims: [7, 3, 4, 1, 2, 250, 3, 1, 13]},
        (60, BASE_MS + HOUR_MS): {dims: [11, 5, 6, 2, 1, 0, 9, 0, 0]},
        (3600, BASE_MS): {dims: [12, 4, 6, 1, 3, 250, 3, 1, 13]},
        (3600, BASE_MS + HOUR_MS): {dims: [11, 5, 6, 2, 1, 0, 9, 0, 0]},
    })
    assert sorted(sums for _, sums in flush.finest_usage(60)) == [
        [5, 1, 2, 0, 1, 0, 0, 0, 0], [7, 3, 4, 1, 2, 250, 3, 1, 13], [11, 5, 6, 2, 1, 0, 9, 0, 0]]


def test_by_window_copies_the_finest_sums_and_never_aliases_them() -> None:
    """A minute's row must not be the very list its hour adds into, nor the caller's: the
    hour's sums would show up in the minute."""
    first, second = [1, 2, 3], [10, 20, 30]
    finest = {(BASE_MS, "r"): first, (BASE_MS + MINUTE_MS, "r"): second,
              (BASE_MS, "s"): [1, 1, 1]}
    windows = by_window(finest, [3600, 60])
    assert windows == {
        (60, BASE_MS): {"r": [1, 2, 3], "s": [1, 1, 1]},
        (60, BASE_MS + MINUTE_MS): {"r": [10, 20, 30]},
        (3600, BASE_MS): {"r": [11, 22, 33], "s": [1, 1, 1]},
    }
    assert (first, second) == ([1, 2, 3], [10, 20, 30])
    windows[(60, BASE_MS)]["r"][0] = 99
    assert first[0] == 1 and windows[(3600, BASE_MS)]["r"][0] == 11



def test_rejected_entries_keep_their_type() -> None:
    judged = judge([(0, b"[1]")], PartitionClock(), PRICES, RULES, NOW_MS)
    assert isinstance(judged.rejected[0][1], Rejected)
    assert reasons(judged) == [(0, R.NOT_AN_OBJECT, 0)]


def test_offsets_lost_to_retention_are_those_between_the_resume_point_and_the_oldest_kept() -> None:
    from costflux.core.ingest import lost_to_retention

    # Resumes at 100 but the topic now starts at 130: 100..129 were deleted unapplied.
    assert lost_to_retention({0: 100}, {0: 130}) == {0: range(100, 130)}
    assert len(lost_to_retention({0: 100}, {0: 130})[0]) == 30
    # Resuming at or past the oldest offset kept loses nothing; an unknown oldest neither.
    assert lost_to_retention({0: 100, 1: 7, 2: 5}, {0: 100, 1: 3}) == {}

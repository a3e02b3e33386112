"""The cost store's atomic flush on a real Redis: exact sums at any size, a flush applied once
whoever applies it, dedup by first position, full windows folding new rows, and what the
serving view reads back."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costflux.agents.serving import ServingView
from costflux.core.aggregate import FlushRows
from costflux.core.rows import OVERFLOW, GpuSums, UsageSums, WindowRows, encode_dims
from costflux.streams.cost_store import AppliedFlush, CostStore, FlushWrite, Outcome, SourceState
from tests.background import run_async

pytestmark = pytest.mark.integration

M = ("m", "search", "", "", "prod", "", "")
WINDOW = (60, 1_700_000_040_000)
DAY_S = 86_400


@pytest.fixture
def store_for(redis_client: redis.Redis, unique: Callable[[str], str]
              ) -> Iterator[Callable[..., CostStore]]:
    def make(namespace: str | None = None, *, kind: str = "usage", max_rows: int = 32_000,
             retention_s: int = DAY_S) -> CostStore:
        return CostStore(redis_client, namespace or unique("ns"), dedup_kind=kind,
                         dedup_horizon_s=3600, retention_s=lambda size_s: retention_s,
                         finest_window_s=60, window_max_rows=max_rows)

    yield make


def flush(before: SourceState, after_offset: int, rows: FlushRows,
          ids: list[str] | None = None, duplicates: tuple[int, ...] = (),
          source: str = "usage:0") -> FlushWrite:
    return FlushWrite(source, before, SourceState(after_offset, 1_700_000_000_000, "t"),
                      ids or [], duplicates, rows, 1)


def usage_rows(*rows: tuple[tuple[str, ...], list[int]],
               window: tuple[int, int] = WINDOW) -> FlushRows:
    return FlushRows(usage={window: {dims: sums for dims, sums in rows}})  # type: ignore[misc]


def read_window(redis_url: str, namespace: str, window: tuple[int, int] = WINDOW) -> WindowRows:
    async def read() -> WindowRows:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return (await ServingView(client, namespace).read_windows([window]))[0]
        finally:
            await client.aclose()

    return run_async(read())


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(0, 10**30), min_size=9, max_size=9), min_size=1,
                max_size=12))
def test_sums_are_exact_at_any_size(store_for: Callable[..., CostStore], redis_url: str,
                                    flushes: list[list[int]]) -> None:
    """Redis scripts compute in doubles (exact to 2**53, about $9,000 in pico-dollars): the
    store adds digit by digit instead."""
    store = store_for()
    state = SourceState()
    for offset, sums in enumerate(flushes):
        applied = store.apply(flush(state, offset + 1, usage_rows((M, sums))))
        assert applied.outcome is Outcome.APPLIED
        state = SourceState(offset + 1, 1_700_000_000_000, "t")
    expected = [sum(column) for column in zip(*flushes, strict=True)]
    held = read_window(redis_url, store.keys.prefix.rsplit(":", 1)[0])
    assert held.usage == {M: UsageSums(*expected)}


def test_a_flush_applies_once_whoever_applies_it_and_a_stale_one_changes_nothing(
    store_for: Callable[..., CostStore], redis_url: str
) -> None:
    store = store_for()
    namespace = store.keys.prefix.rsplit(":", 1)[0]
    first = flush(SourceState(), 10, usage_rows((M, [5, 1, 1, 0, 1])), ids=["a"])
    assert store.apply(first).outcome is Outcome.APPLIED
    # The same flush again (a retry whose answer was lost, or another worker's copy): the
    # store holds its after-state, so it says so and changes nothing.
    again = store.apply(first)
    assert again == AppliedFlush(Outcome.MOVED, stored=first.after)
    # A flush cut after a state the store no longer holds (an old owner's): refused.
    stale = flush(SourceState(3, None, "t"), 12, usage_rows((M, [7, 1, 1, 0, 1])))
    assert store.apply(stale).outcome is Outcome.MOVED
    assert read_window(redis_url, namespace).usage == {M: UsageSums(5, 1, 1, 0, 1)}
    assert store.sources(["usage:0"]) == {"usage:0": first.after}


def test_an_id_counts_once_and_a_refused_step_keeps_none_of_its_claims(
    store_for: Callable[..., CostStore], redis_url: str
) -> None:
    store = store_for()
    namespace = store.keys.prefix.rsplit(":", 1)[0]
    one = usage_rows((M, [1, 0, 0, 0, 1]))
    assert store.apply(flush(SourceState(), 1, one, ids=["x"])).outcome is Outcome.APPLIED
    # "x" again in another partition: a duplicate. The step is refused (its rows counted x)
    # and releases what it claimed, so "y" is free for whichever flush applies it.
    other = flush(SourceState(), 2, usage_rows((M, [2, 0, 0, 0, 2])), ids=["x", "y"],
                  source="usage:1")
    assert store.apply(other) == AppliedFlush(Outcome.DUPLICATES, duplicates=(0,))
    assert read_window(redis_url, namespace).usage == {M: UsageSums(1, 0, 0, 0, 1)}
    third = flush(SourceState(), 5, one, ids=["y"], source="usage:2")
    assert store.apply(third).outcome is Outcome.APPLIED  # y was not left claimed
    # The refused flush again, without x: now y is the duplicate (counted by usage:2).
    retried = flush(SourceState(), 2, usage_rows((M, [1, 0, 0, 0, 1])), ids=["x", "y"],
                    duplicates=(0,), source="usage:1")
    assert store.apply(retried) == AppliedFlush(Outcome.DUPLICATES, duplicates=(0, 1))
    retried = flush(SourceState(), 2, FlushRows(), ids=["x", "y"], duplicates=(0, 1),
                    source="usage:1")
    assert store.apply(retried).outcome is Outcome.APPLIED
    # One flush holding one id twice (a batch repeating an element): the second is the copy.
    twice = flush(SourceState(), 3, one, ids=["z", "z"], source="usage:3")
    assert store.apply(twice) == AppliedFlush(Outcome.DUPLICATES, duplicates=(1,))
    twice = flush(SourceState(), 3, one, ids=["z", "z"], duplicates=(1,), source="usage:3")
    assert store.apply(twice).outcome is Outcome.APPLIED
    assert read_window(redis_url, namespace).usage == {M: UsageSums(3, 0, 0, 0, 3)}


def test_a_full_window_folds_new_combinations_into_their_models_overflow_row(
    store_for: Callable[..., CostStore], redis_url: str
) -> None:
    store = store_for(max_rows=100)
    namespace = store.keys.prefix.rsplit(":", 1)[0]
    rng = random.Random(5)
    sent: dict[tuple[str, ...], list[int]] = {}
    state = SourceState()
    for offset in range(1, 6):
        rows: dict[tuple[str, ...], list[int]] = {}
        for _ in range(60):
            dims = (rng.choice(["a", "b"]), f"team-{rng.randrange(400)}", "", "", "", "", "")
            added = [rng.randrange(10**15), 1, 2, 0, 1]
            for held in (rows, sent):
                held[dims] = [x + y for x, y in zip(held.get(dims, [0] * 5), added, strict=True)]
        gpu = {("node", "a100", "spot", "", "a", "", "1|2|3"): [1000, 600, 400]}
        applied = store.apply(flush(state, offset, FlushRows(usage={WINDOW: rows},
                                                             gpu={WINDOW: gpu})))
        assert applied.outcome is Outcome.APPLIED
        state = SourceState(offset, 1_700_000_000_000, "t")
    held = read_window(redis_url, namespace)
    kept = {dims: sums for dims, sums in held.usage.items() if dims[1] != OVERFLOW}
    assert len(kept) == 100  # the budget, then only overflow rows (one per model) grew
    for dims, sums in kept.items():  # a row held keeps taking its own sums in full
        assert sums == UsageSums(*sent[dims]), dims
    for model in ("a", "b"):
        folded = [sums for dims, sums in sent.items() if dims[0] == model and dims not in kept]
        overflow = held.usage[(model, *[OVERFLOW] * 6)]  # type: ignore[index]
        assert overflow == UsageSums(*(sum(column) for column in zip(*folded, strict=True)))
    # GPU rows are never folded.
    assert held.gpu == {("node", "a100", "spot", "", "a", "", "1|2|3"): GpuSums(5000, 3000, 2000)}
    total = sum(Decimal(s.cost_pico) for s in held.usage.values())
    assert total == sum(Decimal(sums[0]) for sums in sent.values())


def test_two_appliers_of_one_partition_at_once_apply_each_range_once(
    store_for: Callable[..., CostStore], redis_url: str
) -> None:
    """Two workers each believe they own usage:0 and apply their own cuts of the same offsets
    (an old owner not yet told of the rebalance): whoever's cut matches the stored state
    wins each step, the other resumes from what is stored. The total is one of each."""
    namespace = "race-" + str(random.randrange(10**9))
    per_offset = [random.Random(i).randrange(10**14) for i in range(400)]

    def run(cut_every: int) -> None:
        store = store_for(namespace)
        offset = 0
        state = SourceState()
        while offset < len(per_offset):
            end = min(offset + cut_every, len(per_offset))
            cost = sum(per_offset[offset:end])
            result = store.apply(flush(state, end, usage_rows((M, [cost, 0, 0, 0, end - offset]))))
            if result.outcome is Outcome.APPLIED:
                state, offset = SourceState(end, 1_700_000_000_000, "t"), end
            else:  # resume from what the store holds
                assert result.stored is not None
                state, offset = result.stored, result.stored.next_offset or 0

    threads = [threading.Thread(target=run, args=(cut,)) for cut in (7, 11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    held = read_window(redis_url, namespace)
    assert held.usage == {M: UsageSums(sum(per_offset), 0, 0, 0, len(per_offset))}


def test_windows_expire_and_the_index_forgets_them(
    store_for: Callable[..., CostStore], redis_client: redis.Redis
) -> None:
    store = store_for(retention_s=120)
    old, new = (60, 1_700_000_000_000), (60, 1_700_000_000_000 + 3_600_000)
    store.apply(flush(SourceState(), 1, usage_rows((M, [1]), window=old)))
    store.apply(flush(SourceState(1, 1_700_000_000_000, "t"), 2,
                      usage_rows((M, [1]), window=new)))
    assert 0 < redis_client.ttl(store.keys.usage(*old)) <= 120
    # The index drops starts older than the retention before the newest written.
    assert redis_client.zrange(store.keys.index(60), 0, -1) == [str(new[1]).encode()]
    assert redis_client.get(store.keys.event_time) == str(new[1] + 60_000).encode()


def test_a_stored_key_written_by_another_layout_is_summed_not_overwritten(
    store_for: Callable[..., CostStore], redis_client: redis.Redis, redis_url: str
) -> None:
    """A shorter key (a dimension appended later reads as "") and the full key it pads to
    are one row for readers: their sums add up."""
    store = store_for()
    namespace = store.keys.prefix.rsplit(":", 1)[0]
    store.apply(flush(SourceState(), 1, usage_rows((M, [3, 1]))))
    redis_client.hset(store.keys.usage(*WINDOW), encode_dims(M[:5]), "4,2")
    assert read_window(redis_url, namespace).usage == {M: UsageSums(7, 3)}


def test_bad_data_in_the_store_stops_the_flush_before_any_window_changes(
    store_for: Callable[..., CostStore], redis_client: redis.Redis, redis_url: str
) -> None:
    """Something else wrote a sum that is not an integer into a window the flush adds to: the
    script fails before its first row write, so no window and no offset moved."""
    store = store_for()
    namespace = store.keys.prefix.rsplit(":", 1)[0]
    hour = (3600, WINDOW[1] - WINDOW[1] % 3_600_000)
    redis_client.hset(store.keys.usage(*hour), encode_dims(M), "12,x")
    rows = FlushRows(usage={WINDOW: {M: [5, 1]}, hour: {M: [5, 1]}})
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        store.apply(flush(SourceState(), 3, rows))
    assert read_window(redis_url, namespace).usage == {}  # the minute was not written
    assert store.sources(["usage:0"]) == {"usage:0": SourceState()}

"""The worker's Faust consumer (streams.faust_transport): its fetch wait and its commit rule.

Faust's own consumer object is built (nothing connects) and driven through the steps its
fetch loop, its stream and its commit take, so the offsets it would commit are Faust's own
answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faust
import faust.streams
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.faust_transport import FETCH_MAX_WAIT_MS, use_costflux_transport

PARTIALS = "costflux.partials.v1"


@contextmanager
def _consumer(tmp_path: Path, ours: bool) -> Iterator[Any]:
    app = faust.App(f"costflux-test-{ours}", broker="kafka://127.0.0.1:9",
                    datadir=str(tmp_path / str(ours)), web_enabled=False)
    if ours:
        use_costflux_transport(app, contiguous_topics=[PARTIALS])
    consumer = app.consumer
    try:
        yield consumer
    finally:
        consumer._thread.thread_loop.close()  # the consumer thread's own loop, never started


def test_the_worker_consumer_waits_at_most_the_short_fetch_wait(tmp_path: Path) -> None:
    """Faust builds its consumer with a 1.5 s fetch wait, which Tansu serves in full: the
    worker's transport replaces it (the value aiokafka hands its fetcher at start)."""

    async def fetch_wait(ours: bool) -> int:
        with _consumer(tmp_path, ours) as consumer:
            client = consumer._thread._create_worker_consumer(consumer.transport)
            wait: int = client._fetch_max_wait_ms
            await client.stop()
            return wait

    assert asyncio.run(fetch_wait(False)) == 1500
    assert asyncio.run(fetch_wait(True)) == FETCH_MAX_WAIT_MS


def _commits_after_losing_31(consumer: Any, topic: str,
                             fill: bool) -> list[int | None]:
    """Committed at 30 (the next to read); Faust's fetch loop sees 32 after 30 and records
    the gap; the agent acknowledges 30 and 32; then (``fill``) the agent reads 31 back and
    acknowledges it. Return what Faust would commit after each step."""
    tp = TP(topic, 0)
    consumer._committed_offset[tp] = 30

    async def steps() -> list[int | None]:
        commits = []
        await consumer._add_gap(tp, 31, 31)
        for offset in (30, 32):
            consumer._acked[tp].append(offset)
            consumer._acked_index[tp].add(offset)
        commits.append(consumer._new_offset(tp))
        if commits[-1] is not None:
            consumer._committed_offset[tp] = commits[-1]
        if fill:
            await consumer.acknowledge_offsets(tp, range(31, 32))
            commits.append(consumer._new_offset(tp))
        return commits

    return asyncio.run(steps())


def test_a_lost_partial_is_committed_past_only_once_read_back(tmp_path: Path) -> None:
    # Faust's consumer acknowledges the jump: 31 would be committed past, never applied.
    with _consumer(tmp_path, ours=False) as faust_consumer:
        assert _commits_after_losing_31(faust_consumer, PARTIALS, fill=False) == [33]
    with _consumer(tmp_path, ours=True) as consumer:
        # Ours commits up to 31 (30 is done), then waits for 31 ...
        assert _commits_after_losing_31(consumer, PARTIALS, fill=True) == [31, 33]
    with _consumer(tmp_path, ours=True) as consumer:
        # ... however often it is asked, until the agent acknowledges it.
        tp = TP(PARTIALS, 0)
        assert _commits_after_losing_31(consumer, PARTIALS, fill=False) == [31]
        assert consumer._new_offset(tp) is None
        # Other topics keep Faust's rule (a changelog may be compacted: gaps are real).
        assert _commits_after_losing_31(consumer, "costflux-detect-ticks", fill=False) == [33]


def test_faust_alone_commits_past_one_unacknowledged_offset_at_its_head(tmp_path: Path) -> None:
    """Why ours checks the head itself: committed 31, 31 never acknowledged, 32 acknowledged,
    no gap recorded: Faust's rule still commits 33."""

    def commit(ours: bool) -> int | None:
        with _consumer(tmp_path, ours) as consumer:
            tp = TP(PARTIALS, 0)
            consumer._committed_offset[tp] = 31
            consumer._acked[tp].append(32)
            consumer._acked_index[tp].add(32)
            offset: int | None = consumer._new_offset(tp)
            return offset

    assert commit(ours=False) == 33
    assert commit(ours=True) is None


def _commits_after_a_skip(tmp_path: Path, ours: bool) -> list[int | None]:
    """Committed at 30; a rebalance gives the consumer generation 2 while offset 30, fetched
    in generation 1, still waits in the agent's queue, and 31 arrives in generation 2.
    Faust's stream skips 30 (and acknowledges it itself); the agent applies and acknowledges
    31. Then 30 comes again in generation 2 (the seek to the committed offset), and the
    agent applies it. Return what would be committed after 31, and after 30."""

    async def steps(consumer: Any) -> list[int | None]:
        app = consumer.app
        tp = TP(PARTIALS, 0)
        topic = app.topic(PARTIALS, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
        stream = topic.stream().noack()
        events = stream.events().__aiter__()
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.1)  # the stream subscribes its channel
        await app.topics._update_indices()
        (channel,) = app.topics._topic_name_index[PARTIALS]
        app.flow_control.resume()
        consumer._committed_offset[tp] = 30
        app.consumer_generation_id = 2

        async def deliver(offset: int, generation: int) -> None:
            await channel.deliver(ConsumerMessage(PARTIALS, 0, offset, 0.0, 0, [], b"k", b"v",
                                                  None, tp=tp, generation_id=generation))

        async def apply(event: Any) -> None:  # what agents.cost does once its writes are stored
            if ours:
                await consumer.acknowledge_applied(stream, event)
            else:
                await stream.ack(event)

        commits = []
        await deliver(30, generation=1)
        await deliver(31, generation=2)
        event = await asyncio.wait_for(first, 5)
        assert event.message.offset == 31  # 30 was skipped: the agent never saw it
        await apply(event)
        commits.append(consumer._new_offset(tp))
        if commits[-1] is not None:
            consumer._committed_offset[tp] = commits[-1]
        await deliver(30, generation=2)
        event = await asyncio.wait_for(events.__anext__(), 5)
        await apply(event)
        commits.append(consumer._new_offset(tp))
        await stream.stop()
        return commits

    with _consumer(tmp_path, ours) as consumer:
        return asyncio.run(steps(consumer))


@pytest.mark.parametrize("iterator", ["compiled", "python"])
def test_a_message_faust_skipped_in_a_rebalance_is_not_committed_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iterator: str,
) -> None:
    """Faust's compiled stream iterator leaves a skipped message unacknowledged, its pure
    Python one (NO_CYTHON=1, or no compiled wheel) acknowledges it; Faust's head rule then
    commits past it either way. Ours waits at 30 until the agent has applied it."""
    if iterator == "python":
        monkeypatch.setattr(faust.streams, "_CStreamIterator", None)
    # 32 committed with 30 never applied (and the re-delivered 30, behind the committed
    # offset, never counted).
    assert _commits_after_a_skip(tmp_path, ours=False) == [32, None]
    assert _commits_after_a_skip(tmp_path, ours=True) == [None, 32]


def test_the_consumer_knows_where_each_partials_partition_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Taken when Faust seeks to the committed offsets after a rebalance: the committed
    offset, or the log's first offset when none was committed or retention deleted it."""
    partials = [TP(PARTIALS, p) for p in range(4)]
    committed = {partials[0]: 7, partials[1]: None, partials[2]: 0, partials[3]: 3,
                 TP("costflux-detect-ticks", 0): 5}
    first = {partials[0]: 0, partials[1]: 2, partials[2]: 0, partials[3]: 9}

    async def seek_to_committed(self: Any) -> dict[TP, int | None]:
        return committed

    class Client:  # the aiokafka consumer, as far as this step uses it
        @staticmethod
        async def beginning_offsets(tps: list[TP]) -> dict[TP, int]:
            assert sorted(tps) == partials  # only the contiguous topic's, in one request
            return {tp: first[tp] for tp in tps}

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", seek_to_committed)
    with _consumer(tmp_path, ours=True) as consumer:
        monkeypatch.setattr(consumer._thread, "call_thread", call_thread)
        monkeypatch.setattr(consumer._thread, "_ensure_consumer", Client)
        assert consumer.resume_offset(partials[0]) is None  # before any rebalance
        assert asyncio.run(consumer.seek_to_committed()) == committed
        assert [consumer.resume_offset(tp) for tp in partials] == [7, 2, 0, 9]
        assert consumer.resume_offset(TP("costflux-detect-ticks", 0)) is None

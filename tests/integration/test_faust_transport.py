"""The worker's Faust consumer (streams.faust_transport): its fetch wait and its commit rule.

Faust's own consumer object is built (nothing connects) and driven through the steps its
fetch loop and its commit take, so the offsets it would commit are Faust's own answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

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

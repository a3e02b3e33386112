"""Faust's Kafka transport, changed in two places where its defaults cost latency or counts.

**Fetch wait.** Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no
setting to change it. Apache Kafka answers a waiting fetch as soon as data arrives, so the
wait costs nothing there; Tansu 0.6 answers at the end of the wait, so a partial ingest
published reached the combine agent up to that long after. Measured on Tansu (one record
every 370 ms to an idle topic): 126-540 ms from produce to the consumer with 1500 ms, 3-26 ms
with 100 ms. A short wait only adds idle fetches (ten a second) on a broker that needs none.

**Gaps.** Faust's fetch loop takes any jump in offsets for a compaction gap and counts the
skipped offsets as acknowledged, and its commit rule lets the committed offset pass one
unacknowledged offset at its head (it compares the lowest acknowledged offset with the
committed one as if that were the last one done; Kafka's is the next one to read). On a
topic whose offsets are contiguous (the partials topic: never compacted, never
transactional) a jump is a message Faust lost before the agent saw it
(costflux.core.offsets), and either rule then lost a partial for good when a commit and a
crash followed. For such topics nothing is acknowledged that the agent did not apply: the
agent reads lost offsets back and acknowledges them with ``acknowledge_offsets`` once what
it applied from them is stored (agents.holes), and a commit never passes an offset that is
not acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["FETCH_MAX_WAIT_MS", "ContiguousOffsetsConsumer", "use_costflux_transport"]

FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:  # an AIOKafkaConsumer
        consumer = super()._create_worker_consumer(transport)
        # Not a constructor argument Faust lets through; the consumer hands it to its
        # Fetcher in start(), which has not run yet.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class ContiguousOffsetsConsumer(faust_aiokafka.Consumer):
    """Faust's consumer, except that a jump in a contiguous topic is never acknowledged."""

    contiguous_topics: frozenset[str] = frozenset()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic in self.contiguous_topics:
            return  # a lost message, not a compaction gap: the agent reads it back
        await super()._add_gap(tp, offset_from, offset_to)

    async def acknowledge_offsets(self, tp: TP, offsets: range) -> None:
        """Count ``offsets`` of ``tp`` as done: applied by the agent, not delivered by Faust.

        Recorded where Faust keeps gaps, which its commit rule merges into the acknowledged
        offsets (not through Faust's _add_gap: it drops the committed offset itself).
        """
        committed = self._committed_offset[tp]
        start = offsets.start if committed is None else max(offsets.start, committed)
        if start < offsets.stop:
            self._gap[tp].addi(start, offsets.stop)
            self._gap[tp].merge_overlaps()

    def _new_offset(self, tp: TP) -> int | None:
        committed = self._committed_offset[tp]
        if tp.topic in self.contiguous_topics and committed is not None and committed >= 0 and not (
            committed in self._acked_index[tp] or self._gap[tp].overlaps(committed)
        ):
            return None  # the next offset to read is not done: commit nothing yet
        offset: int | None = super()._new_offset(tp)
        return offset


def use_costflux_transport(app: faust.App, contiguous_topics: Iterable[str] = ()) -> None:
    """Give ``app`` the consumer above, for ``contiguous_topics``; call before the app
    creates its consumer (Faust builds it from the transport's class)."""

    class Consumer(ContiguousOffsetsConsumer):
        pass

    Consumer.contiguous_topics = frozenset(contiguous_topics)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    app.transport = Transport(app.conf.broker_consumer, app)

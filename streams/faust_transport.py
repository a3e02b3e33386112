"""Faust's Kafka transport, changed where its defaults cost latency or counts.

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

**Skipped messages.** Faust's stream drops a message that reaches it while a rebalance has
stopped the flow, or that was fetched in an earlier consumer generation; its pure-Python
iterator (``NO_CYTHON=1``, or no compiled wheel) also acknowledges it on the agent's behalf
("otherwise the lag would increase"), and the commit Faust makes while revoking then passes
it, so the next assignment resumes after it. On a contiguous topic
such a message keeps its offset unacknowledged (``acknowledge_applied`` is the agent's own
path), so the committed offset stays at it and the next assignment delivers it again.

**Where a generation begins.** ``resume_offset`` answers where the group resumed a
partition at the last rebalance, so the agent can tell when a generation's first messages
were lost too (agents.holes): Faust's fetch loop can drop the records it fetched while
partitions were paused for recovery, and aiokafka seeks to the committed offset only when
there is one above 0, so nothing brings them back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message, StreamT
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

__all__ = ["FETCH_MAX_WAIT_MS", "ContiguousOffsetsConsumer", "use_costflux_transport"]

log = logging.getLogger(__name__)

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._applied: set[tuple[TP, int]] = set()  # between acknowledge_applied and ack
        self._resume_offsets: dict[TP, int] = {}

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

    async def acknowledge_applied(self, stream: StreamT[Any], event: EventT[Any]) -> None:
        """Acknowledge an event of ``stream`` the agent applied (and stored what it wrote)."""
        message = event.message
        self._applied.add((message.tp, message.offset))
        try:
            await stream.ack(event)
        finally:
            self._applied.discard((message.tp, message.offset))

    def ack(self, message: Message) -> bool:
        if message.topic not in self.contiguous_topics:
            return bool(super().ack(message))
        if (message.tp, message.offset) in self._applied:
            return bool(super().ack(message))
        # Faust's stream skipped it (see the module's docstring). Released, so nothing waits
        # on it; its offset stays unacknowledged.
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
        notify(self._waiting_for_ack)
        log.info("partials %s:%d: offset %d skipped by Faust's stream during a rebalance; "
                 "left unacknowledged, to be delivered again", message.topic,
                 message.partition, message.offset)
        return False

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        # Taken here, as Faust resumes the partitions after a rebalance and before any of
        # their messages flow: no call in the agent's path, none racing the fetcher.
        contiguous = [tp for tp in committed if tp.topic in self.contiguous_topics]
        self._resume_offsets = {}
        if not contiguous:
            return committed
        thread = self._thread
        try:
            first = await thread.call_thread(thread._ensure_consumer().beginning_offsets,
                                             contiguous)
        except Exception as exc:  # noqa: BLE001 - only the generation-start check is lost
            log.warning("first offsets of %s unknown (%r): a loss of this generation's first "
                        "partials cannot be detected", contiguous, exc)
            return committed
        self._resume_offsets = {
            tp: max(first[tp], committed[tp] or 0) for tp in contiguous if tp in first}
        return committed

    def resume_offset(self, tp: TP) -> int | None:
        """Where the group resumed ``tp`` at the last rebalance: its committed offset, or the
        log's first offset when it had none or retention deleted it (Faust's "auto offset
        reset" is earliest). None: not known (not a contiguous topic, or not assigned)."""
        return self._resume_offsets.get(tp)

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

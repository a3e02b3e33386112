"""The hot path: batch-consume usage events, judge, pre-aggregate, apply to the cost store.

The same loop, with its own consumer group and thread, carries GPU samples: a ``SourceKind``
says how a topic's messages are judged, aggregated and counted; the rest is shared.

Faust's per-message loop tops out near 10 k messages/s, so ingest runs on confluent-kafka's
``consume(n)`` in a thread of the worker and writes straight to the cost store.

Exactly once without Kafka transactions, per source partition (``costflux.streams.cost_store``):

1. A flush covers the partition's offsets from the stored next offset to the last one
   consumed. It is judged with the partition's clock as stored (lateness, watermark).
2. Its dead letters are published first, and the broker's acknowledgements awaited (a crash
   after this re-publishes them: dead letters are at least once, keyed by their position).
3. One atomic step applies it: nothing unless the store still holds the state the flush was
   cut after; else its event ids are claimed (dedup), its rows added and the partition's
   state moved past it. If the store holds another state (another worker applied the range,
   or Redis lost writes), the loop resumes the partition from what the store holds.
4. Kafka's committed offset follows, as a lag signal only: a partition resumes from the
   store, never from Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from costflux.core.aggregate import FlushRows
from costflux.core.events import Rejected, deadletter_record
from costflux.core.gpu_samples import GpuAggregate, GpuCandidate, judge_gpu
from costflux.core.ingest import (
    IngestRules,
    Judged,
    PartitionClock,
    aggregate,
    judge,
    lost_to_retention,
)
from costflux.core.pricing import PriceBook
from costflux.core.rows import GpuSums, UsageSums
from costflux.core.spend import SpendRules, add_spend_rows
from costflux.streams.cost_store import CostStore, FlushWrite, Outcome, SourceState
from costflux.streams.failpoints import failpoint
from costflux.streams.health import Health
from costflux.streams.metrics import CostMetrics
from costflux.streams.redis_retry import until_redis_answers

__all__ = ["GPU_SAMPLES", "USAGE", "IngestLoop", "IngestOptions", "SourceKind", "source_name"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


#: Flush once this much is buffered (~35 k events of 240 bytes), so a backlog read in one
#: consume is judged in parts that overlap with applying the part before.
_FLUSH_BYTES = 8 * 1024 * 1024
#: Partitions of one flush applied at once (each on its own Redis connection).
_APPLIERS = 3
#: How often an idle loop checks that the store still holds what it expects of each of its
#: partitions (an emptied Redis is rebuilt from the topic, even where no new data arrives).
_VERIFY_EVERY_S = 2.0


def source_name(topic: str, partition: int) -> str:
    """A source partition's name in the store: ``topic:partition``."""
    return f"{topic}:{partition}"


class _Aggregate(Protocol):
    def rows(self, window_sizes_s: Iterable[int]) -> FlushRows:
        ...


@dataclass(frozen=True, slots=True)
class SourceKind:
    """What differs between the topics ingest reads: how messages are judged and summed."""

    name: str  # names the dedup scope and the thread
    judge: Callable[[list[tuple[int, bytes | None]], PartitionClock, PriceBook, IngestRules, int],
                    Judged[Any]]
    aggregate: Callable[[list[Any], IngestRules], _Aggregate]
    #: Metrics of what an applied flush counted: its counted candidates and its rows.
    counted: Callable[[CostMetrics, list[Any], FlushRows, int], None]
    #: The shortest time between flushes once caught up: each flush is one store round trip
    #: per partition.
    min_flush_s: float = 0.1


def _count_usage(metrics: CostMetrics, counted: list[Any], rows: FlushRows,
                 finest_s: int) -> None:
    metrics.ingested.inc(len(counted))
    for dims, sums in rows.finest_usage(finest_s):
        metrics.count_row(dims, UsageSums(*sums))
    for (label, _day_ms), values in rows.principals.items():
        for value, principal_sums in values.items():
            metrics.count_principal(label, value, UsageSums(*principal_sums))


def _count_gpu(metrics: CostMetrics, counted: list[GpuCandidate], rows: FlushRows,
               finest_s: int) -> None:
    metrics.observe_gpu_samples(counted)
    for (size_s, _start), gpu_rows in rows.gpu.items():
        if size_s == finest_s:
            for dims, sums in gpu_rows.items():
                metrics.count_gpu_row(dims, GpuSums(*sums))


USAGE = SourceKind(
    "usage", judge, lambda counted, rules: aggregate(counted, min(rules.window_sizes_s)),
    _count_usage,
)


def _aggregate_gpu(counted: list[GpuCandidate], rules: IngestRules) -> GpuAggregate:
    totals = GpuAggregate(min(rules.window_sizes_s), rules.gpu_idle_threshold_pct)
    totals.add_all(counted)
    return totals


# GPU samples come every few seconds per GPU and a window holds a few rows per node: a flush
# every 5 s keeps 1,000 GPUs at one store round trip per partition per 5 s (bench/gpu.py).
GPU_SAMPLES = SourceKind("gpu", judge_gpu, _aggregate_gpu, _count_gpu, min_flush_s=5.0)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Plain values the loop runs with (built from Settings at the edge)."""

    topic: str
    deadletter_topic: str
    rules: IngestRules
    batch_size: int
    flush_interval_s: float
    kind: SourceKind = USAGE


@dataclass(frozen=True, slots=True)
class _JudgedFlush:
    """One partition's judged flush on its way to the finisher thread."""

    partition: int
    generation: int  # its buffer's, when cut: a resync in between makes it void
    before: SourceState  # the stored state it was cut after
    after: SourceState  # the state once it is applied
    first: int  # first and last source offsets it holds
    last: int
    messages: int
    judged: Judged[Any]


@dataclass(frozen=True, slots=True)
class _Applied:
    """What the finisher did with one flush list: offsets to commit, partitions to resync."""

    commits: list[TopicPartition]
    moved: dict[int, SourceState]


@dataclass(slots=True)
class _PartitionBuffer:
    """One assigned partition: what the store holds (as far as this loop has cut), its clock,
    and the messages consumed since its last flush."""

    state: SourceState  # the stored state the next flush is cut after
    clock: PartitionClock  # as of the newest message cut
    next_offset: int | None  # the lowest offset still wanted (None: Kafka's first)
    generation: int = 0
    messages: list[tuple[int, bytes | None]] = field(default_factory=list)


class IngestLoop:
    """Runs in its own thread; ``stop()`` ends it after the current flush."""

    def __init__(
        self,
        options: IngestOptions,
        consumer_config: dict[str, Any],
        producer_config: dict[str, Any],
        store: CostStore,
        prices: Callable[[], PriceBook],
        metrics: CostMetrics,
        health: Health,
        admin_config: dict[str, Any] | None = None,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        spend_rules: Callable[[], SpendRules] | None = None,
    ) -> None:
        self._health = health
        # Tells a stored state of an earlier log of the topic (see _log_replaced).
        self._admin = AdminClient(admin_config) if admin_config is not None else None
        self._topic_id = ""
        self._options = options
        self._consumer = Consumer(consumer_config)
        self._producer = Producer(producer_config)
        self._store = store
        self._prices = prices
        # Usage only: the principals' roll-up and the enforced budgets' counters.
        self._spend_rules = spend_rules
        self._metrics = metrics
        self._now_ms = wall_clock_ms
        self._finest_s = min(options.rules.window_sizes_s)
        self._buffers: dict[int, _PartitionBuffer] = {}
        self._buffered_bytes = 0
        self._unsought: dict[int, int] = {}  # partition -> offset a seek still has to reach
        self._stopping = threading.Event()
        self._delivery_errors: list[str] = []
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="costflux-apply")
        self._appliers = ThreadPoolExecutor(max_workers=_APPLIERS,
                                            thread_name_prefix="costflux-apply-partition")
        self._in_flight: Future[_Applied] | None = None
        self._in_flight_messages = 0
        self._judged_messages = 0  # judged, waiting for the flush in flight to finish
        self._verified_at = time.monotonic()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        # Series from the start (at 0), so a first resync or a stall before the first flush
        # shows in rates and alerts.
        metrics.resyncs.labels(options.kind.name)
        metrics.flush_apply_seconds.labels(options.kind.name)
        metrics.unapplied.labels(options.kind.name).set(0)
        metrics.lost_messages.labels(options.kind.name)

    @property
    def kind(self) -> str:
        return self._options.kind.name

    # --- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Consume until stopped; any failure is kept in ``failure`` for the health check."""
        try:
            self._consumer.subscribe(
                [self._options.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            last_flush = time.monotonic()
            min_flush_s = self._options.kind.min_flush_s
            flush_interval_s = max(self._options.flush_interval_s, min_flush_s)
            while not self._stopping.is_set():
                self._seek_unsought()
                messages = self._consumer.consume(self._options.batch_size, timeout=0.1)
                for message in messages:
                    self._buffer(message)
                    if self._buffered_bytes >= _FLUSH_BYTES:
                        # A backlog arrives in one consume; cut it so judging one flush
                        # overlaps with applying the one before.
                        self._flush()
                        last_flush = time.monotonic()
                        if self._stopping.is_set():
                            break  # the rest is read again by the partition's next owner
                waited = time.monotonic() - last_flush
                # Flush on time, or as soon as the backlog is drained: waiting out the
                # interval then only adds latency. The floor keeps round trips few.
                caught_up = len(messages) < self._options.batch_size and waited >= min_flush_s
                if caught_up or waited >= flush_interval_s:
                    self._flush()
                    last_flush = time.monotonic()
                if not messages and time.monotonic() - self._verified_at >= _VERIFY_EVERY_S:
                    self._verify_sources()
                self._metrics.unapplied.labels(self.kind).set(self._unapplied_messages())
            self._flush()
            self._finish_in_flight()
        except BaseException as exc:  # noqa: BLE001 - reported through /readyz and the log
            self.failure = exc
            self._health.errors.labels(f"{self.kind} ingest").inc()
            log.exception("ingest stopped on an error")
        finally:
            self._finisher.shutdown(wait=False, cancel_futures=True)
            self._appliers.shutdown(wait=False, cancel_futures=True)
            self._consumer.close()
            self._producer.flush(5)

    def _unapplied_messages(self) -> int:
        buffered = sum(len(buffer.messages) for buffer in self._buffers.values())
        return buffered + self._judged_messages + self._in_flight_messages

    # --- rebalance ---------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._finish_in_flight()
        names = [source_name(tp.topic, tp.partition) for tp in partitions]
        stored = self._until_redis_answers("read source states",
                                           lambda: self._store.sources(names))
        self._topic_id = self._current_topic_id()
        for tp, name in zip(partitions, names, strict=True):
            buffer, start = self._resume(tp.partition, stored[name])
            self._buffers[tp.partition] = buffer
            tp.offset = start
        self._check_retained({p: b.next_offset for p, b in self._buffers.items()
                              if b.next_offset is not None})
        # Until it reports, a new partition holds the watermark (or goes idle).
        self._until_redis_answers("mark partitions active",
                                  lambda: self._store.mark_active(names, self._now_ms()))
        consumer.assign(partitions)
        self.ready.set()
        log.info("%s ingest assigned partitions %s", self.kind,
                 [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Unflushed messages are dropped, not flushed: the next owner reads them again from
        # the stored offset. A flush already judged is applied first (or found moved).
        self._finish_in_flight()
        for tp in partitions:
            self._buffers.pop(tp.partition, None)
            self._unsought.pop(tp.partition, None)
        consumer.unassign()

    def _resume(self, partition: int, stored: SourceState) -> tuple[_PartitionBuffer, int]:
        """A buffer that continues from ``stored``, and the offset to read from."""
        if stored.next_offset is None or self._log_replaced(partition, stored):
            # Nothing applied (a new deployment, or an emptied store: rebuilt from the topic),
            # or applied from a log that is gone: read the topic from its start.
            return _PartitionBuffer(stored, PartitionClock(), None), OFFSET_BEGINNING
        buffer = _PartitionBuffer(stored, PartitionClock(stored.max_ts_ms), stored.next_offset)
        return buffer, stored.next_offset

    def _resync(self, partition: int, stored: SourceState) -> None:
        """The store holds ``stored``, not what this loop expected: continue from there."""
        buffer = self._buffers.get(partition)
        if buffer is None:
            return  # revoked meanwhile: its next owner reads the store itself
        log.warning("%s ingest: the store holds %s:%d at %r, not %r (another worker applied "
                    "it, or the store lost writes); resuming from the store", self.kind,
                    self._options.topic, partition, stored.token, buffer.state.token)
        self._metrics.resyncs.labels(self.kind).inc()
        resumed, start = self._resume(partition, stored)
        resumed.generation = buffer.generation + 1  # voids flushes cut before
        self._buffers[partition] = resumed
        self._unsought[partition] = start
        if resumed.next_offset is not None:
            self._check_retained({partition: resumed.next_offset})
        self._seek_unsought()

    def _check_retained(self, resume_at: dict[int, int]) -> None:
        """Say so where the topic no longer holds the offset a partition resumes at: its
        retention deleted messages before any worker applied them (they are lost; reading
        goes on from the oldest message kept). One ListOffsets request for them all."""
        if self._admin is None or not resume_at:
            return
        topic = self._options.topic
        wanted = {TopicPartition(topic, p): OffsetSpec.earliest() for p in resume_at}
        try:
            answers = self._admin.list_offsets(wanted, request_timeout=10)
            oldest = {tp.partition: future.result(10).offset for tp, future in answers.items()}
        except (KafkaException, FutureTimeoutError) as exc:
            log.warning("%s: oldest offsets unknown (%r); not checked for deleted messages",
                        topic, exc)
            return
        for partition, lost in lost_to_retention(resume_at, oldest).items():
            log.error("%s:%d: the topic's retention deleted offsets %d..%d before they were "
                      "applied: %d messages are lost. Keep the topic longer than ingest may "
                      "be stopped", topic, partition, lost.start, lost.stop - 1, len(lost))
            self._metrics.lost_messages.labels(self.kind).inc(len(lost))
            self._health.errors.labels(f"{self.kind} ingest").inc()

    def _seek_unsought(self) -> None:
        for partition, offset in list(self._unsought.items()):
            try:
                self._consumer.seek(TopicPartition(self._options.topic, partition, offset))
            except KafkaException as exc:  # not fetching yet: the next turn tries again
                log.debug("seek %d to %d deferred: %s", partition, offset, exc)
                continue
            del self._unsought[partition]

    def _verify_sources(self) -> None:
        """Resync every partition whose stored state is not what this loop expects."""
        self._verified_at = time.monotonic()
        if self._in_flight is not None and not self._in_flight.done():
            return
        self._finish_in_flight()
        names = {source_name(self._options.topic, p): p for p in self._buffers}
        stored = self._until_redis_answers("read source states",
                                           lambda: self._store.sources(list(names)))
        for name, state in stored.items():
            partition = names[name]
            if state != self._buffers[partition].state:
                self._resync(partition, state)

    def _log_replaced(self, partition: int, stored: SourceState) -> bool:
        """Whether the stored state was taken on another log than the topic's current one.

        Kafka gives a topic a new id when it is re-created, and the embedded Tansu gives every
        topic a new id when it restarts empty. Resuming at the old offset would silently
        skip the new log's first messages; the caller reads it from its start instead.
        (The high watermark cannot tell: Tansu reports it below the true end.)
        """
        if not stored.topic_id or not self._topic_id or stored.topic_id == self._topic_id:
            return False
        log.error("%s:%d: the stored offset (%s) belongs to an earlier log of this topic "
                  "(re-created, or an in-memory broker restarted); reading the new log from its "
                  "start. What the lost log held stays counted; none of it can be replayed.",
                  self._options.topic, partition, stored.next_offset)
        self._health.errors.labels(f"{self.kind} ingest").inc()
        return True

    def _current_topic_id(self) -> str:
        if self._admin is None:
            return ""
        topic = self._options.topic
        try:
            described = self._admin.describe_topics(TopicCollection([topic]))[topic].result(10)
        except (KafkaException, FutureTimeoutError) as exc:
            log.warning("%s: topic id unknown (%r); trusting the stored offsets", topic, exc)
            return ""
        return str(described.topic_id)

    # --- the loop ----------------------------------------------------------------------

    def _buffer(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.fatal() or not error.retriable():
                raise RuntimeError(f"consumer error: {error}")
            log.warning("consumer error (retrying): %s", error)
            return
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            return
        buffer = self._buffers.get(partition)
        if buffer is None or partition in self._unsought:
            return
        newest = buffer.messages[-1][0] if buffer.messages else None
        if (newest is not None and offset <= newest) or (
                buffer.next_offset is not None and offset < buffer.next_offset):
            return  # already buffered or flushed (a re-delivery after a seek)
        value = message.value()
        buffer.messages.append((offset, value))
        self._buffered_bytes += len(value) if value else 1

    def _flush(self) -> None:
        """Judge what is buffered, then hand it to the finisher thread to apply.

        Judging is CPU work under the interpreter lock; applying is mostly waiting (the
        broker's acknowledgements of dead letters, the store's script). Running the two in
        different threads lets flush N+1 be judged while flush N is applied; one flush at
        most is in flight, and flushes complete in order.
        """
        now = self._now_ms()
        prices = self._prices()
        options = self._options
        judged_flushes = []
        for partition, buffer in self._buffers.items():
            if not buffer.messages:
                continue
            batch, buffer.messages = buffer.messages, []
            judged = options.kind.judge(batch, buffer.clock, prices, options.rules, now)
            after = SourceState(batch[-1][0] + 1, buffer.clock.max_ts_ms, self._topic_id)
            judged_flushes.append(_JudgedFlush(partition, buffer.generation, buffer.state, after,
                                               batch[0][0], batch[-1][0], len(batch), judged))
            buffer.state, buffer.next_offset = after, after.next_offset
        self._buffered_bytes = 0
        if not judged_flushes:
            return
        self._judged_messages = sum(f.messages for f in judged_flushes)
        self._metrics.unapplied.labels(self.kind).set(self._unapplied_messages())
        self._finish_in_flight()
        # A resync or a revoke while this flush was judged made some of it void.
        current = [f for f in judged_flushes if f.partition in self._buffers
                   and self._buffers[f.partition].generation == f.generation]
        if current:
            self._in_flight = self._finisher.submit(self._apply_flushes, current)
            self._in_flight_messages = sum(f.messages for f in current)
        self._judged_messages = 0

    def _finish_in_flight(self) -> None:
        """Wait for the flush being applied; raise its failure; commit; resync what moved."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        applied = in_flight.result()
        self._in_flight_messages = 0
        if applied.commits:
            failpoint("ingest.before_commit")
            # A lag signal for monitoring and autoscaling; partitions resume from the store.
            self._consumer.commit(offsets=applied.commits, asynchronous=True)
            failpoint("ingest.after_commit")
        for partition, stored in applied.moved.items():
            self._resync(partition, stored)

    # --- the finisher thread -----------------------------------------------------------

    def _apply_flushes(self, flushes: list[_JudgedFlush]) -> _Applied:
        """Publish the flushes' dead letters, then apply each flush to the store."""
        with self._metrics.flush_apply_seconds.labels(self.kind).time():
            self._publish_deadletters(flushes)
            commits: list[TopicPartition] = []
            moved: dict[int, SourceState] = {}
            # Partitions are independent: while Redis runs one partition's step, the next one
            # is aggregated and encoded here (Redis runs the steps one at a time anyway).
            applied = self._appliers.map(self._apply_one, flushes)
            for flush, stored in zip(flushes, applied, strict=True):
                if stored is None:
                    commits.append(TopicPartition(self._options.topic, flush.partition,
                                                  flush.last + 1))
                else:
                    moved[flush.partition] = stored
            return _Applied(commits, moved)

    def _apply_one(self, flush: _JudgedFlush) -> SourceState | None:
        failpoint("ingest.before_apply")
        stored = self._apply(flush)
        failpoint("ingest.after_apply")
        return stored

    def _apply(self, flush: _JudgedFlush) -> SourceState | None:
        """Apply one flush, re-aggregated without the duplicates the store names; None once
        applied, else the state the store holds instead."""
        options = self._options
        candidates = flush.judged.candidates
        event_ids = [c.event_id for c in candidates]
        duplicates: tuple[int, ...] = ()
        while True:
            excluded = set(duplicates)
            counted = [c for i, c in enumerate(candidates) if i not in excluded]
            rows = options.kind.aggregate(counted, options.rules).rows(
                options.rules.window_sizes_s)
            if self._spend_rules is not None:
                add_spend_rows(rows, counted, self._spend_rules())
            write = FlushWrite(source_name(options.topic, flush.partition), flush.before,
                               flush.after, event_ids, duplicates, rows,
                               self._now_ms())
            result = self._until_redis_answers("apply flush",
                                               partial(self._store.apply, write))
            if result.outcome is Outcome.DUPLICATES:
                duplicates = result.duplicates
                continue
            if result.outcome is Outcome.MOVED and result.stored != flush.after:
                return result.stored
            # Applied (MOVED to exactly its own after-state: this flush's own write, whose
            # answer a broken connection lost before a retry).
            self._count(flush, counted, rows, len(duplicates), result.overflowed)
            return None

    def _count(self, flush: _JudgedFlush, counted: list[Any], rows: FlushRows,
               duplicates: int, overflowed: int) -> None:
        metrics = self._metrics
        metrics.duplicates.inc(duplicates)
        self._options.kind.counted(metrics, counted, rows, self._finest_s)
        for _offset, rejected in flush.judged.rejected:
            metrics.deadletters.labels(rejected.reason.value).inc()
        if overflowed:
            metrics.overflowed_rows.inc(overflowed)
            log.warning("%d new label combinations folded into __overflow__ rows: a window is "
                        "full (COSTFLUX_WINDOW_MAX_ROWS)", overflowed)

    def _publish_deadletters(self, flushes: list[_JudgedFlush]) -> None:
        topic = self._options.topic
        for flush in flushes:
            for offset, rejected in flush.judged.rejected:
                self._produce(self._options.deadletter_topic,
                              _deadletter_key(topic, flush.partition, offset, rejected),
                              deadletter_record(rejected, topic, flush.partition, offset))
                failpoint("ingest.mid_deadletters")
        remaining = self._producer.flush(30)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise RuntimeError(
                f"{remaining} dead letters unacknowledged, delivery errors: {errors[:3]}")

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(str(error))

    # --- Redis, waited for ---------------------------------------------------------------

    def _until_redis_answers(self, what: str, call: Callable[[], _T]) -> _T:
        """Run ``call`` until Redis answers it, backing off while Redis is unreachable.

        The store is the state of record: a flush not applied is not counted, so ingest waits
        (and so stops consuming) rather than drops or guesses. Every call retried here is
        safe to repeat: a flush applied once is refused the second time (its own after-state
        is then recognised). While it waits, /readyz says so and
        ``costflux_dependency_retries_total`` rises. It gives up only when the worker stops;
        a restart resumes from the store.
        """
        component = f"{self.kind} ingest"

        def retrying(exc: Exception, first: bool) -> None:
            if first:
                log.warning("%s: Redis unavailable (%s: %s); retrying with backoff",
                            component, what, type(exc).__name__)
            self._health.waiting(component, "redis", exc)

        def recovered() -> None:
            log.info("%s: Redis answers again (%s)", component, what)
            self._health.recovered(component)

        return until_redis_answers(call, self._stopping, retrying, recovered)


def _deadletter_key(topic: str, partition: int, offset: int, rejected: Rejected) -> bytes:
    """Where the input was: the same for every copy of one dead letter (a replayed flush
    publishes its dead letters again), so readers can tell copies apart from new ones."""
    index = "" if rejected.batch_index is None else f":{rejected.batch_index}"
    return f"{topic}:{partition}:{offset}{index}".encode()


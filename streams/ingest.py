"""The hot path: batch-consume usage events, judge, dedup, pre-aggregate, publish partials.

The same loop, with its own consumer group and thread, carries GPU samples: a ``SourceKind``
says how a topic's messages are judged, aggregated and counted; the rest is shared.

Faust's per-message loop tops out near 10 k messages/s, so ingest runs on confluent-kafka's
``consume(n)`` in a thread of the worker and hands Faust only per-partition partial sums.

Exactly-once totals without Kafka transactions, per source partition:

1. Before publishing a flush covering offsets [first, last], record the intent
   (``pending_last``) in the checkpoint, beside ``next`` and the partition clock as of ``next``.
2. Publish partials (tagged with source partition and [first, last]) and dead letters; wait
   for the broker's acknowledgements.
3. Advance the checkpoint (``next`` = last + 1, the clock after it) and commit the offset.

After a crash the new owner resumes at ``next``; if an intent is pending it re-cuts the flush at
exactly ``pending_last``, so the replayed partials equal the originals and the combiner, which
keeps the last applied offset per source partition, skips the ones it already has.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import orjson
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from agents.health import Health
from agents.metrics import CostMetrics
from costflux.core.aggregate import PartialKey, Rows
from costflux.core.events import Rejected, deadletter_record
from costflux.core.gpu_samples import GpuAggregate, GpuCandidate, judge_gpu
from costflux.core.ingest import IngestRules, Judged, PartitionClock, aggregate, judge
from costflux.core.pricing import PriceBook
from costflux.core.windows import SOURCE_MARKS_KEY
from streams.dedup import RedisDeduplicator
from streams.redis_retry import until_redis_answers

__all__ = [
    "GPU_SAMPLES",
    "USAGE",
    "IngestLoop",
    "IngestOptions",
    "SourceKind",
    "applied_watermarks_key",
    "checkpoint_key",
    "watermarks_key",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


#: Flush once this much is buffered (~35 k events of 240 bytes), so a backlog read in one
#: consume is judged in parts that overlap with publishing. Smaller flushes cost more than
#: they overlap: each one publishes a partial per window shard, folded one by one in Faust
#: (bench/: 2 MiB ran 20 % slower than 8 MiB on a 200 k-event backlog).
_FLUSH_BYTES = 8 * 1024 * 1024
_ANY_PARTITION = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner places it


def checkpoint_key(namespace: str, topic: str, partition: int) -> str:
    return f"{namespace}:ingest:{topic}:{partition}"


def watermarks_key(namespace: str) -> str:
    """Hash of 'topic:partition' -> 'watermark_ms|last_data_wall_ms' (empty watermark = none):
    how far ingest has read each source partition, and when it last had data."""
    return f"{namespace}:watermarks"


def applied_watermarks_key(namespace: str) -> str:
    """Hash of partials partition -> the watermark the combiner owning it has applied."""
    return f"{namespace}:applied_watermarks"


class _Partials(Protocol):
    def partials(self, window_sizes_s: Iterable[int], buckets: int) -> dict[PartialKey, Rows]:
        ...


@dataclass(frozen=True, slots=True)
class SourceKind:
    """What differs between the topics ingest reads: how messages are judged and summed."""

    name: str  # names the dedup scope and the thread
    judge: Callable[[list[tuple[int, bytes | None]], PartitionClock, PriceBook, IngestRules, int],
                    Judged[Any]]
    aggregate: Callable[[list[Any], IngestRules], _Partials]
    counted: Callable[[CostMetrics, list[Any]], None]  # metrics of what counted
    #: The shortest time between flushes once caught up. Every flush publishes a partial per
    #: partition and window shard, each folded by Faust (~0.25 ms); this bounds partials/s.
    min_flush_s: float = 0.1
    #: State shards per window for this kind's rows (None: ``IngestOptions.buckets``).
    buckets: int | None = None
    #: Appended to the namespace for this kind's dedup keys: each kind has its own event_ids.
    dedup_scope: str = ""


def _count_usage(metrics: CostMetrics, counted: list[Any]) -> None:
    metrics.ingested.inc(len(counted))


def _count_gpu(metrics: CostMetrics, counted: list[GpuCandidate]) -> None:
    metrics.observe_gpu_samples(counted)


USAGE = SourceKind(
    "usage", judge, lambda counted, rules: aggregate(counted, min(rules.window_sizes_s)),
    _count_usage,
)


def _aggregate_gpu(counted: list[GpuCandidate], rules: IngestRules) -> GpuAggregate:
    totals = GpuAggregate(min(rules.window_sizes_s), rules.gpu_idle_threshold_pct)
    totals.add_all(counted)
    return totals


# GPU samples come every few seconds per GPU, and a window holds a few rows per node: flushing
# every 2 s into one shard per window keeps 1,000 GPUs at a few partials per second
# (bench/gpu.py: 8 shards and 0.1 s flushes cost the worker ~3x more CPU).
GPU_SAMPLES = SourceKind(
    "gpu", judge_gpu, _aggregate_gpu, _count_gpu, min_flush_s=5.0, buckets=1,
    dedup_scope=":gpu",
)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Plain values the loop runs with (built from Settings at the edge)."""

    topic: str
    partials_topic: str
    deadletter_topic: str
    namespace: str  # Redis key prefix, one per consumer group
    rules: IngestRules
    buckets: int
    batch_size: int
    flush_interval_s: float
    dedup_horizon_s: int
    partials_partitions: int  # every one gets the watermarks of each flush
    kind: SourceKind = USAGE


@dataclass(frozen=True, slots=True)
class _Output:
    """One record a flush publishes."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int | None = None  # None: the key's partition (murmur2), or any


@dataclass(frozen=True, slots=True)
class _JudgedFlush:
    """One partition's judged flush on its way to the finisher thread."""

    partition: int
    first: int  # first and last source offsets it covers
    last: int
    judged: Judged[Any]
    verdicts: Future[list[bool]]  # dedup's answer, one per candidate
    max_ts_ms: int | None  # the partition clock after it: its checkpoint
    watermark_ms: int | None  # the partition's watermark after it, published once it is:
    mark: str  # to Redis with its wall time, and to every partials partition in-band


@dataclass(slots=True)
class _PartitionBuffer:
    """Messages of one partition consumed since its last flush."""

    next_offset: int  # the first offset the next flush must start at
    clock: PartitionClock
    cut: int | None = None  # a pending flush must end exactly here (crash recovery)
    messages: list[tuple[int, bytes | None]] = field(default_factory=list)
    had_data_wall_ms: int = 0


class IngestLoop:
    """Runs in its own thread; ``stop()`` ends it after the current flush."""

    def __init__(
        self,
        options: IngestOptions,
        consumer_config: dict[str, str],
        producer_config: dict[str, str],
        redis_client: redis.Redis,
        prices: Callable[[], PriceBook],
        metrics: CostMetrics,
        health: Health,
        admin_config: dict[str, Any] | None = None,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._health = health
        # Tells a checkpoint of an earlier log of the topic (see _log_replaced).
        self._admin = AdminClient(admin_config) if admin_config is not None else None
        self._topic_id: str | None = None
        self._options = options
        self._consumer = Consumer(consumer_config)
        self._producer = Producer(producer_config)
        self._redis = redis_client
        self._dedup = RedisDeduplicator(
            redis_client, options.namespace + options.kind.dedup_scope, options.dedup_horizon_s
        )
        self._prices = prices
        self._metrics = metrics
        self._now_ms = wall_clock_ms
        self._buffers: dict[int, _PartitionBuffer] = {}
        self._buffered_bytes = 0
        self._stopping = threading.Event()
        self._delivery_errors: list[str] = []
        self._dedup_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="costflux-dedup")
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="costflux-publish")
        self._in_flight: Future[list[TopicPartition]] | None = None
        self.ready = threading.Event()
        self.failure: BaseException | None = None

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
                messages = self._consumer.consume(self._options.batch_size, timeout=0.1)
                for message in messages:
                    self._buffer(message)
                    if self._buffered_bytes >= _FLUSH_BYTES:
                        # A backlog arrives in one consume; cut it so judging one flush
                        # overlaps with publishing the one before.
                        self._flush()
                        last_flush = time.monotonic()
                waited = time.monotonic() - last_flush
                # Flush on time, or as soon as the backlog is drained: waiting out the
                # interval then only adds latency. The floor keeps partials few.
                caught_up = len(messages) < self._options.batch_size and waited >= min_flush_s
                if caught_up or waited >= flush_interval_s:
                    self._flush()
                    last_flush = time.monotonic()
            self._flush()
            self._finish_in_flight()
        except BaseException as exc:  # noqa: BLE001 - reported through /readyz and the log
            self.failure = exc
            self._health.errors.labels(f"{self.kind} ingest").inc()
            log.exception("ingest stopped on an error")
        finally:
            self._dedup_pool.shutdown(wait=False, cancel_futures=True)
            self._finisher.shutdown(wait=False, cancel_futures=True)
            self._consumer.close()
            self._producer.flush(5)

    # --- rebalance ---------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._finish_in_flight()  # checkpoints read below must include it
        now = self._now_ms()

        def read_checkpoints(pipe: redis.client.Pipeline) -> None:
            for tp in partitions:
                pipe.hgetall(checkpoint_key(self._options.namespace, tp.topic, tp.partition))

        checkpoints = self._redis_pipeline("read checkpoints", read_checkpoints)
        topic_id = self._topic_id = self._current_topic_id()
        marks: dict[Any, str] = {}  # redis-py's Mapping key type is invariant
        for tp, saved in zip(partitions, checkpoints, strict=True):
            state = {k.decode(): v.decode() for k, v in saved.items()}
            buffer = self._restore(state)
            if self._log_replaced(tp, state, topic_id):
                buffer.next_offset, buffer.cut = -1, None
                tp.offset = OFFSET_BEGINNING
            else:
                tp.offset = buffer.next_offset if buffer.next_offset >= 0 else OFFSET_STORED
            self._buffers[tp.partition] = buffer
            buffer.had_data_wall_ms = now
            marks[f"{tp.topic}:{tp.partition}"] = self._mark(buffer, now)
        if marks:
            self._until_redis_answers("publish watermarks", partial(
                self._redis.hset, watermarks_key(self._options.namespace), mapping=marks))
        consumer.assign(partitions)
        self.ready.set()
        log.info("ingest assigned partitions %s", [tp.partition for tp in partitions])

    def _log_replaced(self, tp: TopicPartition, state: dict[str, str],
                      topic_id: str | None) -> bool:
        """Whether the checkpoint was taken on another log than the topic's current one.

        Kafka gives a topic a new id when it is re-created, and the embedded Tansu gives every
        topic a new id when it restarts empty. Resuming at the old checkpoint would silently
        skip the new log's first messages; the caller reads it from its start instead.
        (The high watermark cannot tell: Tansu reports it below the true end.)
        """
        saved = state.get("topic_id")
        if not saved or topic_id is None or saved == topic_id:
            return False
        log.error("%s:%d: the checkpoint (offset %s) belongs to an earlier log of this topic "
                  "(re-created, or an in-memory broker restarted); reading the new log from its "
                  "start. What the lost log held stays counted; none of it can be replayed.",
                  tp.topic, tp.partition, state.get("next"))
        self._health.errors.labels(f"{self.kind} ingest").inc()
        return True

    def _current_topic_id(self) -> str | None:
        if self._admin is None:
            return None
        topic = self._options.topic
        try:
            described = self._admin.describe_topics(TopicCollection([topic]))[topic].result(10)
        except (KafkaException, FutureTimeoutError) as exc:
            log.warning("%s: topic id unknown (%r); trusting the checkpoints", topic, exc)
            return None
        return str(described.topic_id)

    def _restore(self, state: dict[str, str]) -> _PartitionBuffer:
        # No "next" but an intent: a crash during the partition's first flush. That flush
        # began where Kafka starts a group without a committed offset (-1 below), and its
        # partials may be published: it is re-cut at the intent like any other.
        next_offset = int(state.get("next", "-1"))
        pending = int(state.get("pending_last", "-1"))
        max_ts = state.get("max_ts", "")
        buffer = _PartitionBuffer(
            next_offset=next_offset, clock=PartitionClock(int(max_ts) if max_ts else None)
        )
        if pending >= 0 and pending >= next_offset:
            buffer.cut = pending
        return buffer

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Unflushed messages are dropped, not flushed: the next owner re-reads them from the
        # checkpoint, and nothing of them was published or marked as seen. A flush already
        # judged is published first, so the next owner starts after it.
        self._finish_in_flight()
        for tp in partitions:
            self._buffers.pop(tp.partition, None)
        consumer.unassign()

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
        if buffer is None:
            return
        if buffer.next_offset < 0:
            buffer.next_offset = offset  # first run on this partition: start where Kafka did
        newest = buffer.messages[-1][0] if buffer.messages else buffer.next_offset - 1
        if offset <= newest:
            return  # already buffered or flushed (a re-delivery after a seek)
        value = message.value()
        buffer.messages.append((offset, value))
        self._buffered_bytes += len(value) if value else 1

    def _flush(self) -> None:
        """Judge what is buffered, then hand it to the finisher thread to publish.

        Judging is CPU work under the interpreter lock; publishing is mostly waiting (dedup on
        Redis, broker acknowledgements, checkpoint writes). Running the two in different
        threads lets flush N+1 be judged while flush N is published; one flush at most is in
        flight, and flushes complete in order, so the checkpoint protocol is unchanged.
        """
        now = self._now_ms()
        cuts = self._cut_batches()
        if not cuts:
            return
        prices = self._prices()
        options = self._options
        judged_flushes = []
        for partition, buffer, batch in cuts:
            judged = options.kind.judge(batch, buffer.clock, prices, options.rules, now)
            buffer.had_data_wall_ms = now
            # Dedup runs on Redis (another core) while the next partition is judged.
            verdicts = self._dedup_pool.submit(
                self._until_redis_answers, "dedup", partial(
                    self._dedup.first_sightings,
                    [c.event_id for c in judged.candidates],
                    [c.position for c in judged.candidates],
                    f"{options.topic}:{partition}:",
                ),
            )
            # The clock and watermark as of this flush's end: what its checkpoint records.
            judged_flushes.append(_JudgedFlush(
                partition, batch[0][0], batch[-1][0], judged, verdicts,
                buffer.clock.max_ts_ms, self._watermark(buffer), self._mark(buffer, now),
            ))
        self._finish_in_flight()
        self._in_flight = self._finisher.submit(self._publish_flushes, judged_flushes)

    def _cut_batches(self) -> list[tuple[int, _PartitionBuffer, list[tuple[int, bytes | None]]]]:
        cuts = []
        for partition, buffer in self._buffers.items():
            if not buffer.messages:
                continue
            if buffer.cut is not None:
                if buffer.messages[-1][0] < buffer.cut:
                    continue  # re-cut after a crash: wait until the pending flush is complete
                split = bisect.bisect_right(buffer.messages, buffer.cut, key=lambda m: m[0])
                batch, buffer.messages = buffer.messages[:split], buffer.messages[split:]
                buffer.cut = None
            else:
                batch, buffer.messages = buffer.messages, []
            buffer.next_offset = batch[-1][0] + 1
            cuts.append((partition, buffer, batch))
        self._buffered_bytes = sum(
            len(value) if value else 1 for b in self._buffers.values() for _, value in b.messages
        )
        return cuts

    def _finish_in_flight(self) -> None:
        """Wait for the flush being published; raise its failure; commit its offsets."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            commits = in_flight.result()
            # Kafka's committed offsets are for lag monitoring; the checkpoint is what resumes.
            self._consumer.commit(offsets=commits, asynchronous=True)

    def _publish_flushes(self, flushes: list[_JudgedFlush]) -> list[TopicPartition]:
        """On the finisher thread: intent, publish partials and dead letters, checkpoint."""
        options = self._options
        intents: list[str] = []
        outputs: list[_Output] = []
        for flush in flushes:
            candidates = flush.judged.candidates
            counted = [c for c, ok in zip(candidates, flush.verdicts.result(), strict=True) if ok]
            self._metrics.duplicates.inc(len(candidates) - len(counted))
            options.kind.counted(self._metrics, counted)
            source = f"{options.topic}:{flush.partition}"
            partials = options.kind.aggregate(counted, options.rules).partials(
                options.rules.window_sizes_s, options.kind.buckets or options.buckets
            )
            for key, rows in partials.items():
                value = {"src": source, "first": flush.first, "last": flush.last, "rows": rows}
                outputs.append(_Output(key.encode(), orjson.dumps(value), options.partials_topic))
            for offset, rejected in flush.judged.rejected:
                outputs.append(_Output(None, self._deadletter(flush.partition, offset, rejected),
                                       options.deadletter_topic))
                self._metrics.deadletters.labels(rejected.reason.value).inc()
            intents.append(checkpoint_key(options.namespace, options.topic, flush.partition))
        # After the partials, in the same order on each partition (the producer is idempotent):
        # the combiner closes windows on these (costflux.core.windows.AppliedWatermarks).
        marks = orjson.dumps({"marks": {f"{options.topic}:{flush.partition}": flush.watermark_ms
                                        for flush in flushes}})
        outputs.extend(_Output(SOURCE_MARKS_KEY, marks, options.partials_topic, partition)
                       for partition in range(options.partials_partitions))

        def record_intents(pipe: redis.client.Pipeline) -> None:
            for key, flush in zip(intents, flushes, strict=True):
                pipe.hset(key, mapping={"pending_last": flush.last})

        self._redis_pipeline("record intents", record_intents)
        self._publish(outputs)
        return self._complete(flushes)

    def _publish(self, outputs: list[_Output]) -> None:
        for output in outputs:
            while True:
                try:
                    self._producer.produce(
                        output.topic, value=output.value, key=output.key,
                        partition=_ANY_PARTITION if output.partition is None else output.partition,
                        on_delivery=self._delivered)
                    break
                except BufferError:
                    self._producer.poll(0.05)
        remaining = self._producer.flush(30)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise RuntimeError(
                f"{remaining} partials unacknowledged, delivery errors: {errors[:3]}"
            )

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(str(error))

    def _complete(self, flushes: list[_JudgedFlush]) -> list[TopicPartition]:
        """Advance each partition's checkpoint and watermark; return the offsets to commit."""
        options = self._options
        commits = []
        marks: dict[Any, str] = {}  # redis-py's Mapping key type is invariant
        for flush in flushes:
            commits.append(TopicPartition(options.topic, flush.partition, flush.last + 1))
            marks[f"{options.topic}:{flush.partition}"] = flush.mark

        def advance(pipe: redis.client.Pipeline) -> None:
            for flush in flushes:
                pipe.hset(
                    checkpoint_key(options.namespace, options.topic, flush.partition),
                    mapping={
                        "next": flush.last + 1,
                        "max_ts": _text(flush.max_ts_ms),
                        "pending_last": -1,
                        "topic_id": self._topic_id or "",
                    },
                )
            pipe.hset(watermarks_key(options.namespace), mapping=marks)

        self._redis_pipeline("advance checkpoints", advance)
        return commits

    # --- Redis, waited for ---------------------------------------------------------------

    def _redis_pipeline(self, what: str,
                        commands: Callable[[redis.client.Pipeline], None]) -> list[Any]:
        """Queue ``commands`` on a fresh pipeline (a failed one is emptied) until it runs."""

        def run() -> list[Any]:
            pipe = self._redis.pipeline()
            commands(pipe)
            result: list[Any] = pipe.execute()
            return result

        return self._until_redis_answers(what, run)

    def _until_redis_answers(self, what: str, call: Callable[[], _T]) -> _T:
        """Run ``call`` until Redis answers it, backing off while Redis is unreachable.

        Dedup and checkpoints live in Redis: a flush published without them could count
        twice after a crash, so ingest waits (and so stops consuming) rather than drops or
        guesses. Every call retried here is idempotent: dedup's SET NX at the same position
        answers "counts" again, checkpoint writes set the same values. While it waits,
        /readyz says so and ``costflux_dependency_retries_total`` rises. It gives up only
        when the worker stops; the checkpoint protocol then resumes the flush on restart.
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

    def _watermark(self, buffer: _PartitionBuffer) -> int | None:
        return buffer.clock.watermark_ms(self._options.rules.allowed_lateness_ms)

    def _mark(self, buffer: _PartitionBuffer, now: int) -> str:
        return f"{_text(self._watermark(buffer))}|{buffer.had_data_wall_ms or now}"

    def _deadletter(self, partition: int, offset: int, rejected: Rejected) -> bytes:
        return deadletter_record(rejected, self._options.topic, partition, offset)


def _text(value: int | None) -> str:
    return "" if value is None else str(value)

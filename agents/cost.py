"""The cost agent: folds ingest's partials into window state (a Faust table) and serves it.

Partials are keyed by window shard, so each shard's state lives in exactly one partition of
the table's changelog: the partition of the partials that update it (co-partitioned). The
state records the last offset applied per source partition, which makes re-delivered or
re-published partials harmless. A partial is acknowledged (its offset may be committed) only
once its changelog writes are stored, and windows close on the watermark marks ingest appends
behind each flush's partials: on what this agent has applied, not on what ingest has read.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import cast

import faust
import orjson
import redis.asyncio as aioredis
from faust.types import TP

from agents.confirmed_table import confirmed_table
from agents.health import Health, guarded
from agents.holes import HoleFiller, PartialRecord, ReadOffsets
from agents.metrics import CostMetrics
from agents.progress import CHECK_INTERVAL_S, CombineProgress
from agents.serving import ServingView
from costflux.core.aggregate import PartialKey, apply_partial, decode_dimensions
from costflux.core.allocation import AllocationOptions, TimeRange, allocate, cover
from costflux.core.gpu_samples import decode_gpu_row_key, is_gpu_row
from costflux.core.windows import SOURCE_MARKS_KEY, AppliedWatermarks, PartitionMark
from schemas.deadletter import DeadLetterReason, DeadLetterRecord
from streams.faust_transport import ContiguousOffsetsConsumer
from streams.ingest import applied_watermarks_key, watermarks_key

__all__ = ["CostAgentOptions", "CostCombiner"]

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
#: Partials applied between two changelog confirmations (one broker round trip each), at
#: most; a task confirms what is pending every _CONFIRM_INTERVAL_S.
_CONFIRM_EVERY = 500
_CONFIRM_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class CostAgentOptions:
    """Plain values the agent runs with."""

    partials_topic: str
    deadletter_topic: str
    partitions: int
    namespace: str
    finest_window_s: int
    window_sizes_s: tuple[int, ...]
    retention_ms: int
    partition_idle_ms: int
    shard_max_bytes: int
    stall_after_s: float


class CostCombiner:
    """Registers the combine agent and its timers on a Faust app."""

    def __init__(
        self,
        app: faust.App,
        options: CostAgentOptions,
        redis_client: aioredis.Redis,
        view: ServingView,
        metrics: CostMetrics,
        health: Health,
        read_offsets: ReadOffsets,
    ) -> None:
        self._options = options
        self._holes = HoleFiller(read_offsets, self._resume_offset, health,
                                 metrics.reread_partials)
        self._progress = CombineProgress(
            options.partials_topic, lambda: self._consumer, lambda: app.rebalancing,
            options.stall_after_s, health, metrics)
        self._redis = redis_client
        self._view = view
        self._metrics = metrics
        self._health = health
        self._dirty: set[bytes] = set()
        self._publishing: set[bytes] = set()  # taken from _dirty, being written to the view
        self._unacknowledged: list[tuple[faust.StreamT[bytes], faust.EventT[bytes]]] = []
        self._filled: list[tuple[TP, range]] = []  # holes read back, not yet acknowledged
        self._confirming = asyncio.Lock()
        self._app = app
        self._applied = AppliedWatermarks()
        # The minimum over this worker's partials partitions of what it has applied: closes
        # its windows. None right after a rebalance, until each partition's marks are read.
        self._closing_watermark_ms: int | None = None
        #: The pipeline's: the minimum over every partials partition (agents.detector).
        self.global_watermark_ms: int | None = None
        self.table = confirmed_table(
            app,
            "cost-windows",
            partitions=options.partitions,
            # bytes keys use the raw codec, live and in changelog recovery alike, so the
            # changelog key equals the partials key and murmur2 places both in one partition.
            key_type=bytes,
            # Evicting closed windows happens in a timer, outside any event: let the
            # partitioner place those deletes (same murmur2 placement as the partials).
            use_partitioner=True,
        )
        self._partials = app.topic(
            options.partials_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=options.partitions,
        )
        self._deadletters = app.topic(
            options.deadletter_topic, key_serializer="raw", value_serializer="raw"
        )
        app.agent(self._partials, name="costflux.combine")(self._combine)
        # A timer that raises would stop the whole worker (Faust crashes the app); guarded,
        # it reports through /readyz and the error counter and tries again at its next tick.
        app.task(self._acknowledge_until_stopped)
        for interval_s, name, step in (
            (0.25, "costflux.publish_view", self._publish_view),
            (1.0, "costflux.advance_watermark", self._advance_watermark),
            (10.0, "costflux.resync_view", self._resync_view),
            (15.0, "costflux.unit_costs", self._publish_unit_costs),
            (CHECK_INTERVAL_S, "costflux.combine_progress", self._progress.check),
        ):
            app.timer(interval_s, name=name)(guarded(health, name, step))

    async def _combine(self, stream: faust.StreamT[bytes]) -> None:
        # Acknowledged by _acknowledge_confirmed, once their changelog records are stored: an
        # acknowledged event's offset may be committed at any time (see agents.confirmed_table).
        manual: faust.StreamT[bytes] = stream.noack()  # type: ignore[attr-defined]
        async for event in manual.events():
            message = event.message
            filled = await self._holes.before(message.topic, message.partition,
                                              message.generation_id or 0, message.offset,
                                              self._combine_partial)
            if filled:
                self._filled.append((message.tp, filled))
            if isinstance(event.key, bytes) and isinstance(event.value, bytes):
                await self._combine_partial(PartialRecord(
                    message.topic, message.partition, message.offset, event.key, event.value))
            self._unacknowledged.append((manual, event))
            self._progress.took(message.partition, message.offset)
            if len(self._unacknowledged) >= _CONFIRM_EVERY:
                await self._acknowledge_confirmed()

    async def _acknowledge_until_stopped(self) -> None:
        # A task, not an app.timer: timers end as soon as the worker starts stopping, and
        # Faust's shutdown then waits for every event the agent took to be acknowledged
        # (Consumer.wait_empty): without this loop it waited forever on a backlog. Tasks
        # are cancelled only after the consumer has stopped.
        step = guarded(self._health, "costflux.acknowledge_confirmed", self._acknowledge_confirmed)
        while True:
            await asyncio.sleep(_CONFIRM_INTERVAL_S)
            await step()

    async def _acknowledge_confirmed(self) -> None:
        async with self._confirming:  # from the agent and the timer: one at a time
            if not self._unacknowledged and not self._filled:
                return
            # Taken together, with no await between: every event taken has its writes in
            # the table's unconfirmed set, which the confirmation below covers.
            events, self._unacknowledged = self._unacknowledged, []
            filled, self._filled = self._filled, []
            await self.table.changelog_confirmed()
            consumer = self._consumer
            for tp, offsets in filled:
                await consumer.acknowledge_offsets(tp, offsets)
            for stream, event in events:
                await consumer.acknowledge_applied(stream, event)

    @property
    def _consumer(self) -> ContiguousOffsetsConsumer:
        return cast(ContiguousOffsetsConsumer, self._app.consumer)  # streams.app sets it up

    def _resume_offset(self, topic: str, partition: int) -> int | None:
        return self._consumer.resume_offset(TP(topic, partition))

    async def _combine_partial(self, partial: PartialRecord) -> None:
        try:
            if partial.key == SOURCE_MARKS_KEY:
                self._applied.observe(partial.partition, orjson.loads(partial.value)["marks"])
                return
            await self._apply(partial)
        except Exception as exc:  # noqa: BLE001 - dead-lettered, counted, reported
            # Raising here would restart the agent on the same partial forever (a stall);
            # skipping it silently would lose it. It goes to the dead-letter topic, byte
            # for byte (it can be re-published once the cause is fixed), the error counter
            # rises and /readyz fails for a while.
            log.exception("combine could not apply a partial; dead-lettered")
            self._health.error("costflux.combine", exc)
            await self._send_unapplied(partial, exc)

    async def _apply(self, record: PartialRecord) -> None:
        key_bytes = record.key
        partial = orjson.loads(record.value)
        shard = PartialKey.decode(key_bytes)
        if self._closed_for_good(shard):
            await self._send_late(record, shard)
            return
        state = self.table.get(key_bytes)
        overflowed = state.get("overflowed", 0) if state else 0
        state, fresh = apply_partial(state, partial, self._options.shard_max_bytes, shard.bucket)
        if state.get("overflowed", 0) > overflowed:
            self._metrics.overflowed_rows.inc(state["overflowed"] - overflowed)
            if not overflowed:  # once per shard; the counter tracks the rest
                log.warning("window shard %s is full (COSTFLUX_SHARD_MAX_BYTES): new label "
                            "combinations fold into its __overflow__ rows; raise "
                            "COSTFLUX_BUCKETS_PER_WINDOW if this is real cardinality", shard)
        if not fresh:
            self._metrics.replayed_partials.inc()
            # Write the state back anyway (same value, one changelog record): with the
            # RocksDB store a SIGKILL can leave local state ahead of the changelog (written
            # to disk, its changelog record still in Faust's producer buffer). The partial
            # is re-delivered because its offset was not committed, and without this
            # re-send the changelog would miss it for good: another owner or a new disk
            # would restore the shard short (tests/integration/test_scale_out.py).
            self.table[key_bytes] = state
            return
        self.table[key_bytes] = state
        self._dirty.add(key_bytes)
        if shard.size_s == self._options.finest_window_s:
            # Count each event once in the metrics: the finest window holds all of them.
            for row_key, sums in partial["rows"].items():
                if is_gpu_row(row_key):
                    self._metrics.count_gpu_row(decode_gpu_row_key(row_key), sums)
                else:
                    self._metrics.count_row(decode_dimensions(row_key), sums)

    def _closed_for_good(self, shard: PartialKey) -> bool:
        watermark = self._closing_watermark_ms
        return watermark is not None and shard.end_ms + self._options.retention_ms <= watermark

    async def _send_late(self, record: PartialRecord, shard: PartialKey) -> None:
        await self._send_deadletter(record, DeadLetterReason.LATE, (
            f"partial for window {shard.size_s}s@{shard.start_ms} arrived after the window "
            "closed and its retention passed; raise COSTFLUX_STATE_RETENTION_S"
        ))

    async def _send_unapplied(self, record: PartialRecord, exc: Exception) -> None:
        reason = (DeadLetterReason.BAD_JSON if isinstance(exc, orjson.JSONDecodeError)
                  else DeadLetterReason.INVALID_VALUE)
        await self._send_deadletter(record, reason, (
            f"partial could not be applied ({type(exc).__name__}); only costflux ingest "
            "should write to the partials topic"
        ))

    async def _send_deadletter(self, partial: PartialRecord, reason: DeadLetterReason,
                               detail: str) -> None:
        record = DeadLetterRecord(
            reason=reason,
            detail=detail,
            source_topic=partial.topic,
            source_partition=partial.partition,
            source_offset=partial.offset,
            original_b64=base64.b64encode(partial.value).decode(),
        )
        self._metrics.deadletters.labels(reason.value).inc()
        await self._deadletters.send(value=record.model_dump_json().encode())

    async def _publish_view(self) -> None:
        if not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        self._publishing = keys
        try:
            await self._write_view(keys)
        except BaseException:
            self._dirty |= keys  # Redis unreachable: write them at the next tick
            raise
        finally:
            self._publishing = set()

    async def _resync_view(self) -> None:
        # After a rebalance or restart the table holds recovered shards that no partial has
        # touched yet; versioned writes make re-sending them harmless.
        await self._write_view(set(self.table.keys()))

    async def _write_view(self, keys: set[bytes]) -> None:
        shards = []
        for key in keys:
            state = self.table.get(key)
            if state is not None:
                shards.append((PartialKey.decode(key), state))
        if shards:
            await self._view.write_shards(shards, self._options.finest_window_s)

    async def _publish_unit_costs(self) -> None:
        """Cost per request and per token by model, over the last hour the watermark closed.

        Token cost plus all of the model's GPU cost (idle included: the seed's GPU time x
        price / requests), read from the serving view, where every worker's shards meet.
        """
        watermark = self.global_watermark_ms
        if watermark is None:
            return
        end = watermark - watermark % HOUR_MS
        span = TimeRange(end - HOUR_MS, end)
        rows = await self._view.read_windows(cover(span, self._options.window_sizes_s))
        by_model = allocate(rows, [0], span, AllocationOptions(share_idle=True))
        self._metrics.set_unit_costs(
            {model: (float(row["costPerRequest"]), float(row["costPerToken"]))  # type: ignore[arg-type]
             for model, row in by_model.items() if row["requests"]}
        )

    async def _advance_watermark(self) -> None:
        """Close windows on what this worker's combiner has applied; publish it per partials
        partition; take the pipeline's watermark (detection, unit costs) as the minimum over
        every partition, whoever applies it."""
        raw = await self._redis.hgetall(watermarks_key(self._options.namespace))
        activity = {}
        for name, value in raw.items():
            watermark, _, last_data = _text(value).partition("|")
            activity[_text(name)] = PartitionMark(
                int(watermark) if watermark else None, int(last_data or 0)
            )
        now_ms = time.time_ns() // 1_000_000
        own = self._own_partitions()
        self._applied.keep_only(own)
        applied = {partition: self._applied.watermark(
            partition, activity, now_ms, self._options.partition_idle_ms) for partition in own}
        known = [w for w in applied.values() if w is not None]
        self._closing_watermark_ms = (
            min(known) if own and len(known) == len(own) else None)
        self._evict_closed()
        await self._advance_pipeline_watermark(
            {p: w for p, w in applied.items() if w is not None})

    async def _advance_pipeline_watermark(self, applied: dict[int, int]) -> None:
        key = applied_watermarks_key(self._options.namespace)
        published = {int(p): int(w) for p, w in (await self._redis.hgetall(key)).items()}
        raised = {p: w for p, w in applied.items() if w > published.get(p, w - 1)}
        if raised:
            # Only raised: the next owner of a partition briefly re-reads what this one had.
            await self._redis.hset(key, mapping=raised)  # type: ignore[arg-type]
            published.update(raised)
        if len(published) < self._options.partitions:
            return  # some partition has not been applied by anyone yet
        current = min(published[p] for p in range(self._options.partitions))
        if self.global_watermark_ms is None or current > self.global_watermark_ms:
            self.global_watermark_ms = current
            self._metrics.watermark.set(current / 1000)

    def _own_partitions(self) -> list[int]:
        topic = self._options.partials_topic
        return sorted(tp.partition for tp in self._app.consumer.assignment()
                      if tp.topic == topic)

    def _evict_closed(self) -> None:
        # Not before the view has them: a shard applied and closed between two view
        # publishes (a backfill whose marks close its windows at once) would never be served.
        unpublished = self._dirty | self._publishing
        expired = [
            key for key in list(self.table.keys())
            if key not in unpublished and self._closed_for_good(PartialKey.decode(key))
        ]
        for key in expired:
            del self.table[key]
        if expired:
            log.info("evicted %d closed window shards", len(expired))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""The cost agent: folds ingest's partials into window state (a Faust table) and serves it.

Partials are keyed by window shard, so each shard's state lives in exactly one partition of
the table's changelog: the partition of the partials that update it (co-partitioned). The
state records the last offset applied per source partition, which makes re-delivered or
re-published partials harmless.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass

import faust
import orjson
import redis.asyncio as aioredis

from agents.health import Health, guarded
from agents.metrics import CostMetrics
from agents.serving import ServingView
from costflux.core.aggregate import PartialKey, apply_partial, decode_dimensions
from costflux.core.allocation import AllocationOptions, TimeRange, allocate, cover
from costflux.core.gpu_samples import decode_gpu_row_key, is_gpu_row
from costflux.core.windows import PartitionMark, global_watermark
from schemas.deadletter import DeadLetterReason, DeadLetterRecord
from streams.ingest import watermarks_key

__all__ = ["CostAgentOptions", "CostCombiner"]

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000


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
    ) -> None:
        self._options = options
        self._redis = redis_client
        self._view = view
        self._metrics = metrics
        self._health = health
        self._dirty: set[bytes] = set()
        self.global_watermark_ms: int | None = None
        self.table = app.Table(
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
        for interval_s, name, step in (
            (0.25, "costflux.publish_view", self._publish_view),
            (1.0, "costflux.advance_watermark", self._advance_watermark),
            (10.0, "costflux.resync_view", self._resync_view),
            (15.0, "costflux.unit_costs", self._publish_unit_costs),
        ):
            app.timer(interval_s, name=name)(guarded(health, name, step))

    async def _combine(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key_bytes = event.key
            if not isinstance(key_bytes, bytes) or not isinstance(event.value, bytes):
                continue
            try:
                await self._apply(event, key_bytes, event.value)
            except Exception as exc:  # noqa: BLE001 - dead-lettered, counted, reported
                # Raising here would restart the agent on the same partial forever (a stall);
                # skipping it silently would lose it. It goes to the dead-letter topic, byte
                # for byte (it can be re-published once the cause is fixed), the error counter
                # rises and /readyz fails for a while.
                log.exception("combine could not apply a partial; dead-lettered")
                self._health.error("costflux.combine", exc)
                await self._send_unapplied(event, exc)

    async def _apply(self, event: faust.EventT[bytes], key_bytes: bytes, value: bytes) -> None:
        partial = orjson.loads(value)
        shard = PartialKey.decode(key_bytes)
        if self._closed_for_good(shard):
            await self._send_late(event, shard)
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
        watermark = self.global_watermark_ms
        return watermark is not None and shard.end_ms + self._options.retention_ms <= watermark

    async def _send_late(self, event: faust.EventT[bytes], shard: PartialKey) -> None:
        await self._send_deadletter(event, DeadLetterReason.LATE, (
            f"partial for window {shard.size_s}s@{shard.start_ms} arrived after the window "
            "closed and its retention passed; raise COSTFLUX_STATE_RETENTION_S"
        ))

    async def _send_unapplied(self, event: faust.EventT[bytes], exc: Exception) -> None:
        reason = (DeadLetterReason.BAD_JSON if isinstance(exc, orjson.JSONDecodeError)
                  else DeadLetterReason.INVALID_VALUE)
        await self._send_deadletter(event, reason, (
            f"partial could not be applied ({type(exc).__name__}); only costflux ingest "
            "should write to the partials topic"
        ))

    async def _send_deadletter(self, event: faust.EventT[bytes], reason: DeadLetterReason,
                               detail: str) -> None:
        message = event.message
        value = event.value if isinstance(event.value, bytes) else b""
        record = DeadLetterRecord(
            reason=reason,
            detail=detail,
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            original_b64=base64.b64encode(value).decode(),
        )
        self._metrics.deadletters.labels(reason.value).inc()
        await self._deadletters.send(value=record.model_dump_json().encode())

    async def _publish_view(self) -> None:
        if not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        try:
            await self._write_view(keys)
        except BaseException:
            self._dirty |= keys  # Redis unreachable: write them at the next tick
            raise

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
        raw = await self._redis.hgetall(watermarks_key(self._options.namespace))
        marks = {}
        for name, value in raw.items():
            watermark, _, last_data = _text(value).partition("|")
            marks[_text(name)] = PartitionMark(
                int(watermark) if watermark else None, int(last_data or 0)
            )
        now_ms = time.time_ns() // 1_000_000
        current = global_watermark(marks, now_ms, self._options.partition_idle_ms)
        if current is None:
            return
        if self.global_watermark_ms is None or current > self.global_watermark_ms:
            self.global_watermark_ms = current
            self._metrics.watermark.set(current / 1000)
        self._evict_closed()

    def _evict_closed(self) -> None:
        expired = [
            key for key in list(self.table.keys())
            if self._closed_for_good(PartialKey.decode(key))
        ]
        for key in expired:
            del self.table[key]
        if expired:
            log.info("evicted %d closed window shards", len(expired))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

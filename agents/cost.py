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


class CostCombiner:
    """Registers the combine agent and its timers on a Faust app."""

    def __init__(
        self,
        app: faust.App,
        options: CostAgentOptions,
        redis_client: aioredis.Redis,
        view: ServingView,
        metrics: CostMetrics,
    ) -> None:
        self._options = options
        self._redis = redis_client
        self._view = view
        self._metrics = metrics
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
        app.timer(0.25, name="costflux.publish_view")(self._publish_view)
        app.timer(1.0, name="costflux.advance_watermark")(self._advance_watermark)
        app.timer(10.0, name="costflux.resync_view")(self._resync_view)
        app.timer(15.0, name="costflux.unit_costs")(self._publish_unit_costs)

    async def _combine(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key_bytes = event.key
            if not isinstance(key_bytes, bytes) or not isinstance(event.value, bytes):
                continue
            partial = orjson.loads(event.value)
            shard = PartialKey.decode(key_bytes)
            if self._closed_for_good(shard):
                await self._send_late(event, shard)
                continue
            state, fresh = apply_partial(self.table.get(key_bytes), partial)
            if not fresh:
                self._metrics.replayed_partials.inc()
                continue
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
        message = event.message
        record = DeadLetterRecord(
            reason=DeadLetterReason.LATE,
            detail=(
                f"partial for window {shard.size_s}s@{shard.start_ms} arrived after the window "
                "closed and its retention passed; raise COSTFLUX_STATE_RETENTION_S"
            ),
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            original_b64=base64.b64encode(event.value).decode(),
        )
        self._metrics.deadletters.labels(DeadLetterReason.LATE.value).inc()
        await self._deadletters.send(value=record.model_dump_json().encode())

    async def _publish_view(self) -> None:
        if not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        await self._write_view(keys)

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

"""The serving view: window rows any worker answers queries from, read from the cost store.

Ingest writes the store (``streams.cost_store``, which also spells its layout); this reads it,
asynchronously, for the HTTP API, the detector and the unit-cost gauges. Each window's rows
are decoded here, once, into ``costflux.core.rows.WindowRows``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import redis.asyncio as aioredis

from costflux.core.rows import (
    GpuSums,
    UsageSums,
    WindowRows,
    add_sums,
    decode_gpu_dims,
    decode_gpu_sums,
    decode_usage_dims,
    decode_usage_sums,
)
from costflux.core.windows import PartitionMark
from costflux.streams.cost_store import SourceState, StoreKeys

__all__ = ["ServingView"]


class ServingView:
    """Reads window rows and the source partitions' progress from the cost store."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self._client = client
        self._keys = StoreKeys(namespace)

    async def newest_event_time_ms(self) -> int | None:
        value = await self._client.get(self._keys.event_time)
        return int(value) if value else None

    async def earliest_window_ms(self, size_s: int) -> int | None:
        """The start of the oldest window of ``size_s`` still held."""
        oldest = await self._client.zrange(self._keys.index(size_s), 0, 0)
        return int(oldest[0]) if oldest else None  # type: ignore[arg-type]

    async def read_windows(self, tiles: list[tuple[int, int]]) -> list[WindowRows]:
        """Rows of each (size_s, start_ms) window; absent windows read as empty."""
        async with self._client.pipeline(transaction=False) as pipe:
            for size_s, start_ms in tiles:
                pipe.hgetall(self._keys.usage(size_s, start_ms))
                pipe.hgetall(self._keys.gpu(size_s, start_ms))
            results = await pipe.execute()
        return [
            WindowRows(_decoded(usage, decode_usage_dims, decode_usage_sums),
                       _decoded(gpu, decode_gpu_dims, decode_gpu_sums))
            for usage, gpu in zip(results[::2], results[1::2], strict=True)
        ]

    async def read_principal_days(self, label: str, days: list[int]
                                  ) -> dict[int, dict[str, UsageSums]]:
        """Each UTC day's usage per value of ``label`` (``api_key``, ``end_user``), by day
        start; a day not held reads as empty."""
        async with self._client.pipeline(transaction=False) as pipe:
            for day_ms in days:
                pipe.hgetall(self._keys.principals(label, day_ms))
            results = await pipe.execute()
        return {day_ms: _decoded(raw, bytes.decode, decode_usage_sums)
                for day_ms, raw in zip(days, results, strict=True)}

    async def partition_marks(self, lateness_ms: int) -> dict[str, PartitionMark]:
        """Every source partition's watermark (its clock less ``lateness_ms``) and when it
        last had data: what the pipeline's watermark is taken over."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.sources)
            pipe.hgetall(self._keys.activity)
            sources, activity = await pipe.execute()
        marks = {}
        for raw_name in sources.keys() | activity.keys():
            state = SourceState.parse(sources.get(raw_name))
            watermark = None if state.max_ts_ms is None else state.max_ts_ms - lateness_ms
            marks[raw_name.decode()] = PartitionMark(watermark, int(activity.get(raw_name, 0)))
        return marks


_Key = TypeVar("_Key")
_Sums = TypeVar("_Sums", UsageSums, GpuSums)


def _decoded(raw: Mapping[bytes, bytes], key: Callable[[bytes], _Key],
             sums: Callable[[bytes], _Sums]) -> dict[_Key, _Sums]:
    """A window's stored rows, decoded. Keys written by another version of the text form can
    decode to one key (a shorter one reads its missing values as ""): their sums add up."""
    rows: dict[_Key, _Sums] = {}
    for raw_key, raw_sums in raw.items():
        row_key, row_sums = key(raw_key), sums(raw_sums)
        held = rows.get(row_key)
        rows[row_key] = row_sums if held is None else add_sums(held, row_sums)
    return rows

"""The Redis serving view: window totals any worker can answer queries from.

Layout (``ns`` is the consumer group): ``ns:win:<size>:<start>`` is a hash of row key (the
dimension values as JSON) -> the row's SUM_FIELDS, comma separated (rows written by older
versions have fewer dimensions and sums: readers pad them with "" and 0); GPU rows
(keys ``gpu:[…]``) hold "gpu_ms,busy_ms,idle_ms"; ``ns:winver:<size>:
<start>`` holds each shard's version; ``ns:windows:<size>`` is a sorted set of window starts;
``ns:event_time_ms`` is the newest finest-window end seen (the "now" of relative queries).

Writes overwrite whole shards and carry a version (the sum of the shard's applied offsets plus
one each, which grows with every offset or partition applied), so a worker that lost a shard
in a rebalance cannot overwrite the new owner's newer totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis

from costflux.core.aggregate import PartialKey

__all__ = ["ServingView"]

# KEYS: rows hash, versions hash, windows zset, event-time key.
# ARGV: shard, version, start, ttl, window end, then row key/value pairs.
# The index forgets windows whose rows have expired (start older than ttl before this one).
_WRITE_SHARD = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if current >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
local expired_before = tonumber(ARGV[3]) - 1000 * tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('(%d', expired_before))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local newest = tonumber(redis.call('GET', KEYS[4]) or '0')
if tonumber(ARGV[5]) > newest then redis.call('SET', KEYS[4], ARGV[5]) end
return 1
"""


class ServingView:
    """Reads and writes window totals in Redis."""

    def __init__(
        self, client: aioredis.Redis, namespace: str, retention_s: Callable[[int], int]
    ) -> None:
        self._client = client
        self._ns = namespace
        self._retention_s = retention_s  # window size in s -> how long its rows are kept
        self._write = client.register_script(_WRITE_SHARD)

    async def write_shards(
        self, shards: Iterable[tuple[PartialKey, Mapping[str, Any]]], finest_s: int
    ) -> None:
        """Overwrite each shard's rows if its version is newer than what is stored."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, state in shards:
                # +1: a partition's first offset is 0, and a shard that gains a partition at
                # offset 0 must still get a newer version than it had without it.
                version = sum(offset + 1 for offset in state["applied"].values())
                args: list[Any] = [key.bucket, version, key.start_ms,
                                   self._retention_s(key.size_s),
                                   _finest_end(key, finest_s)]
                for row_key, sums in state["rows"].items():
                    args.extend((row_key, ",".join(map(str, sums))))
                await self._write(
                    keys=[self._rows_key(key.size_s, key.start_ms),
                          self._versions_key(key.size_s, key.start_ms),
                          self._index_key(key.size_s), self._event_time_key()],
                    args=args,
                    client=pipe,
                )
            await pipe.execute()

    async def newest_event_time_ms(self) -> int | None:
        value = await self._client.get(self._event_time_key())
        return int(value) if value else None

    async def earliest_window_ms(self, size_s: int) -> int | None:
        """The start of the oldest window of ``size_s`` still held."""
        oldest = await self._client.zrange(self._index_key(size_s), 0, 0)
        return int(oldest[0]) if oldest else None  # type: ignore[arg-type]

    async def read_windows(self, tiles: list[tuple[int, int]]) -> list[dict[str, list[int]]]:
        """Rows of each (size_s, start_ms) window; absent windows read as empty."""
        async with self._client.pipeline(transaction=False) as pipe:
            for size_s, start_ms in tiles:
                pipe.hgetall(self._rows_key(size_s, start_ms))
            results = await pipe.execute()
        return [
            {k.decode(): [int(x) for x in v.decode().split(",")] for k, v in raw.items()}
            for raw in results
        ]

    def _rows_key(self, size_s: int, start_ms: int) -> str:
        return f"{self._ns}:win:{size_s}:{start_ms}"

    def _versions_key(self, size_s: int, start_ms: int) -> str:
        return f"{self._ns}:winver:{size_s}:{start_ms}"

    def _index_key(self, size_s: int) -> str:
        return f"{self._ns}:windows:{size_s}"

    def _event_time_key(self) -> str:
        return f"{self._ns}:event_time_ms"


def _finest_end(key: PartialKey, finest_s: int) -> int:
    # A large window's shard only says events exist somewhere inside it; the finest windows
    # are what moves "now" forward precisely.
    return key.end_ms if key.size_s == finest_s else 0

"""Cache entries in Redis: the shared, durable truth that every proxy replica reads.

One hash per entry (partition, exact f32 embedding, full-text digest for truncated prompts,
the response, model and token counts) with a TTL, and one sorted set ranking entries by last
use for LRU eviction at the configured maximum. The API key is never part of an entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from costflux.cache.policy import TokenUsage, evictions_needed

__all__ = ["Answer", "EntryStore", "NewEntry", "StoredVector"]

_LOAD_CHUNK: Final = 1000
_VECTOR_FIELDS: Final = ("partition", "vector", "digest")
_ANSWER_FIELDS: Final = ("response", "model", "input_tokens", "output_tokens",
                         "cached_input_tokens")


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An answer to store under a partition and its prompt's embedding."""

    partition: str
    vector: npt.NDArray[np.float32]
    digest: str | None
    #: Digest of the prompt's semantic text: the same text later finds the entry without
    #: the index (approximate search may miss an entry among many).
    text_sha: str
    response: bytes
    model: str
    usage: TokenUsage


@dataclass(frozen=True, slots=True)
class StoredVector:
    """What the similarity decision needs of a stored entry."""

    entry_id: int
    partition: str
    vector: npt.NDArray[np.float32]
    digest: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    """A stored response and the usage it was priced at."""

    response: bytes
    model: str
    usage: TokenUsage


class EntryStore:
    """Entries under ``namespace`` in one Redis database."""

    def __init__(self, client: aioredis.Redis, namespace: str, *, max_entries: int,
                 ttl_s: int) -> None:
        if max_entries < 1 or ttl_s < 1:
            raise ValueError("max_entries and ttl_s must be at least 1")
        self._redis = client
        self._ns = namespace
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._lru = f"{namespace}:lru"

    def _key(self, entry_id: int) -> str:
        return f"{self._ns}:entry:{entry_id}"

    def _exact_key(self, partition: str, text_sha: str) -> str:
        return f"{self._ns}:exact:{partition}:{text_sha}"

    async def exact(self, partition: str, text_sha: str) -> int | None:
        """The entry stored for exactly this text in this partition, if one was."""
        found = await self._redis.get(self._exact_key(partition, text_sha))
        return int(found) if found is not None else None

    async def put(self, entry: NewEntry, now_ms: int) -> tuple[int, list[int]]:
        """Store an entry; return its id and the ids evicted to stay under the maximum."""
        entry_id = int(await self._redis.incr(f"{self._ns}:seq"))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(entry_id), mapping={
                "partition": entry.partition,
                "vector": entry.vector.astype(np.float32).tobytes(),
                "digest": entry.digest or "",
                "response": entry.response,
                "model": entry.model,
                "input_tokens": entry.usage.input_tokens,
                "output_tokens": entry.usage.output_tokens,
                "cached_input_tokens": entry.usage.cached_input_tokens,
            })
            pipe.expire(self._key(entry_id), self._ttl_s)
            # Left behind when the entry is evicted: answer() then finds nothing, and it expires.
            pipe.set(self._exact_key(entry.partition, entry.text_sha), entry_id, ex=self._ttl_s)
            pipe.zadd(self._lru, {str(entry_id): now_ms})
            pipe.zcard(self._lru)
            *_, size = await pipe.execute()
        excess = evictions_needed(int(size), self._max_entries)
        if not excess:
            return entry_id, []
        # ZPOPMIN is atomic, so replicas evicting at once never drop an entry twice.
        popped: list[Any] = await self._redis.zpopmin(self._lru, excess)
        evicted = [int(member) for member, _ in popped]
        if evicted:
            await self._redis.delete(*(self._key(i) for i in evicted))
        return entry_id, evicted

    async def vectors(self, entry_ids: list[int]) -> tuple[list[StoredVector], list[int]]:
        """The stored vectors of ``entry_ids``, and the ids whose entry has expired."""
        if not entry_ids:
            return [], []
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(self._key(entry_id), list(_VECTOR_FIELDS))
            rows = await pipe.execute()
        found, gone = [], []
        for entry_id, (partition, vector, digest) in zip(entry_ids, rows, strict=True):
            if partition is None or vector is None:
                gone.append(entry_id)
                continue
            found.append(StoredVector(entry_id, partition.decode(),
                                      np.frombuffer(vector, dtype=np.float32),
                                      digest.decode() if digest else None))
        return found, gone

    async def answer(self, entry_id: int, now_ms: int) -> Answer | None:
        """The stored answer, marked as just used; None if it expired meanwhile."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._key(entry_id), list(_ANSWER_FIELDS))
            # XX: an entry evicted meanwhile must not come back into the ranking.
            pipe.zadd(self._lru, {str(entry_id): now_ms}, xx=True)
            (response, model, tokens_in, tokens_out, cached), _ = await pipe.execute()
        if response is None or model is None:
            return None
        return Answer(response, model.decode(),
                      TokenUsage(int(tokens_in), int(tokens_out), int(cached or 0)))

    async def forget(self, entry_ids: list[int]) -> None:
        """Drop expired entries from the LRU ranking."""
        if entry_ids:
            await self._redis.zrem(self._lru, *(str(i) for i in entry_ids))

    async def all_vectors(self) -> AsyncIterator[StoredVector]:
        """Every live entry's vector, least recently used first (to rebuild an index)."""
        start = 0
        while True:
            members: list[Any] = await self._redis.zrange(self._lru, start,
                                                          start + _LOAD_CHUNK - 1)
            if not members:
                return
            start += len(members)
            found, gone = await self.vectors([int(m) for m in members])
            for stored in found:
                yield stored
            if gone:
                await self.forget(gone)
                start -= len(gone)

    async def newest_id(self) -> int:
        """The id the latest entry got, from any replica (0 before the first)."""
        value = await self._redis.get(f"{self._ns}:seq")
        return int(value) if value is not None else 0

"""The gateway's semantic cache: prompts similar enough to a stored one are answered from it.

Entries live in Redis (costflux.cache.store), shared by every replica; each replica keeps an
approximate index of their vectors in memory, rebuilt from Redis at start-up and kept in step
with the entries other replicas store. Only ``costflux gateway --semantic-cache`` and
``costflux cache`` import this module: it needs the ``cache`` extra (numpy, the embedding
model), which the gateway without the cache does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from redis.exceptions import RedisError

from costflux.cache.embedder import Embedder
from costflux.cache.index import VectorIndex
from costflux.cache.policy import CachePolicy, Candidate, Lookup, TokenUsage, best_hit, text_digest
from costflux.cache.store import Answer, EntryStore, NewEntry

__all__ = ["Hit", "Miss", "SemanticCache"]

log = logging.getLogger("costflux.gateway")

_REBUILD_BATCH: Final = 5000

Vector = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True, slots=True)
class Hit:
    answer: Answer
    similarity: float


@dataclass(frozen=True, slots=True)
class Miss:
    """What storing the upstream's answer to a miss needs."""

    lookup: Lookup
    vector: Vector
    digest: str | None  # the text's digest when the model saw only its beginning
    text_sha: str


@dataclass(slots=True)
class SemanticCache:
    """The embedding model, the shared entry store, and this replica's index of it."""

    embedder: Embedder
    store: EntryStore
    policy: CachePolicy = CachePolicy()
    candidates: int = 8  # index neighbours checked per look-up
    sync_interval_s: float = 2.0
    stats: dict[str, int] = field(default_factory=lambda: {
        "hits": 0, "misses": 0, "bypassed": 0, "stored": 0, "evicted": 0, "redis_errors": 0})
    _index: VectorIndex = field(default_factory=VectorIndex)
    _synced_id: int = 0
    # Ids the last sync found missing: another replica may have taken the id (INCR) but not
    # yet written its entry; they are asked for once more before counting as evicted.
    _unsynced: list[int] = field(default_factory=list)
    _sync_task: asyncio.Task[None] | None = None
    # One embedding at a time: numpy already uses the cores, and a queue beats thrashing.
    _embed_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def indexed(self) -> int:
        return len(self._index)

    async def start(self) -> None:
        """Load the index from Redis, then follow other replicas' entries."""
        # Read before loading: entries stored meanwhile are picked up by the sync.
        self._synced_id = await self.store.newest_id()
        loaded, batch = 0, []
        async for stored in self.store.all_vectors():
            batch.append((stored.entry_id, stored.partition, stored.vector))
            if len(batch) == _REBUILD_BATCH:
                await asyncio.to_thread(self._index.add_many, batch)
                loaded, batch = loaded + len(batch), []
        await asyncio.to_thread(self._index.add_many, batch)
        loaded += len(batch)
        log.info("semantic cache: %d entries loaded from Redis into the index", loaded)
        self._sync_task = asyncio.create_task(self._sync_forever())

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task

    async def _sync_forever(self) -> None:
        """Index entries other replicas store (ids are one shared sequence)."""
        while True:
            await asyncio.sleep(self.sync_interval_s)
            try:
                await self._sync()
            except Exception:  # Redis away for a moment: the next round catches up
                log.warning("semantic cache: index sync failed; retrying", exc_info=True)

    async def _sync(self) -> None:
        newest = await self.store.newest_id()
        retry, self._unsynced = self._unsynced, []
        while retry or self._synced_id < newest:
            last = min(newest, self._synced_id + 1000)
            # Entries this replica stored are indexed already (``remember``).
            fresh = [i for i in range(self._synced_id + 1, last + 1) if i not in self._index]
            found, gone = await self.store.vectors(retry + fresh)
            self._index.add_many([(s.entry_id, s.partition, s.vector) for s in found])
            # A retried id still gone was evicted or expired; a fresh one gets one more try.
            self._unsynced += [i for i in gone if i not in retry]
            retry, self._synced_id = [], last

    async def look_up(self, lookup: Lookup) -> Hit | Miss:
        """A stored answer similar enough to the request's, or what storing its own needs.
        Raises RedisError when the store does not answer."""
        text_sha = text_digest(lookup.text)
        # The same text needs no embedding and cannot be missed by the approximate index.
        exact = await self.store.exact(lookup.partition, text_sha)
        if exact is not None:
            answer = await self.store.answer(exact, _now_ms())
            if answer is not None:
                self.stats["hits"] += 1
                return Hit(answer, 1.0)
        vector, truncated = await self._embed(lookup.text)
        digest = text_sha if truncated else None
        found = await self._find(lookup, vector, digest)
        if found is not None:
            answer = await self.store.answer(found.entry_id, _now_ms())
            if answer is not None:
                self.stats["hits"] += 1
                return Hit(answer, found.similarity)
            self._index.remove(found.entry_id)
        self.stats["misses"] += 1
        return Miss(lookup, vector, digest, text_sha)

    async def remember(self, miss: Miss, response: bytes, model: str,
                       usage: TokenUsage) -> None:
        """Store the upstream's answer to a miss. Raises RedisError."""
        entry_id, evicted = await self.store.put(
            NewEntry(miss.lookup.partition, miss.vector, miss.digest, miss.text_sha, response,
                     model, usage),
            _now_ms(),
        )
        self._index.add(entry_id, miss.lookup.partition, miss.vector)
        for old in evicted:
            self._index.remove(old)
        self.stats["stored"] += 1
        self.stats["evicted"] += len(evicted)

    def redis_failed(self, step: str, exc: RedisError) -> None:
        self.stats["redis_errors"] += 1
        # The type only: a connection error's text may name the server.
        log.warning("semantic cache: Redis failed in %s (%s); answered without the cache",
                    step, type(exc).__name__)

    async def _embed(self, text: str) -> tuple[Vector, bool]:
        """The prompt's vector, and whether the model saw only its beginning."""
        async with self._embed_lock:
            (embedding,) = await asyncio.to_thread(self.embedder.embed, [text])
        return embedding.vector, embedding.truncated

    async def _find(self, lookup: Lookup, vector: Vector,
                    digest: str | None) -> Candidate | None:
        ids = self._index.nearest(lookup.partition, vector, self.candidates)
        stored, gone = await self.store.vectors(ids)
        for entry_id in gone:
            self._index.remove(entry_id)
        await self.store.forget(gone)
        candidates = [Candidate(s.entry_id, s.partition, float(s.vector @ vector), s.digest)
                      for s in stored]
        return best_hit(candidates, lookup.partition, self.policy.threshold, digest)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

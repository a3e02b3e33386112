"""Partials Faust fetched but never delivered to the agent, read back and applied in order.

See costflux.core.offsets for why a hole means a lost message. Holes are read straight from
the topic (streams.kafka.read_offsets, in a thread) and handed to the agent's combine step
before the message that revealed them, so no later partial of a source makes an earlier
one look like a replay. The first message of each partition in a consumer generation is
compared with where the group resumes it (streams.faust_transport's resume_offset). Faust
does not count holes as done: the agent acknowledges them once what it applied from them is
stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from agents.health import Health
from costflux.core.offsets import OffsetHoles

__all__ = ["HoleFiller", "PartialRecord", "ReadOffsets", "ResumeOffset"]

log = logging.getLogger(__name__)

#: Reads (offset, key, value) of a range of offsets of one partition (blocking).
ReadOffsets = Callable[[str, int, range], list[tuple[int, bytes | None, bytes | None]]]
#: The offset the agent's consumer resumed a partition at in this generation (None: unknown).
ResumeOffset = Callable[[str, int], int | None]


@dataclass(frozen=True, slots=True)
class PartialRecord:
    """One record of the partials topic: delivered by Faust, or read back over a hole."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


class HoleFiller:
    """Watches the offsets a stream delivers; reads back and combines what it skipped."""

    def __init__(self, read_offsets: ReadOffsets, resume_offset: ResumeOffset, health: Health,
                 reread: Counter, retry_s: float = 1.0) -> None:
        self._read_offsets = read_offsets
        self._resume_offset = resume_offset
        self._health = health
        self._reread = reread
        self._retry_s = retry_s
        self._holes = OffsetHoles()

    async def before(self, topic: str, partition: int, generation: int, offset: int,
                     combine: Callable[[PartialRecord], Awaitable[None]]) -> range:
        """Combine the offsets skipped just before ``offset``, if any, in order; return them
        (to be acknowledged once their changelog writes are stored)."""
        start = None
        if self._holes.starts_generation(partition, generation):
            start = self._resume_offset(topic, partition)
        hole = self._holes.observe(partition, generation, offset, start)
        if not hole:
            return hole
        log.warning("partials %s:%d: offsets %d..%d were fetched but never delivered%s; "
                    "reading them back", topic, partition, hole.start, hole.stop - 1,
                    "" if start is None else " (at the start of a consumer generation)")
        self._reread.inc(len(hole))
        records = await self._read_back(topic, partition, hole)
        for read_offset, key, value in records:
            if isinstance(key, bytes) and isinstance(value, bytes):
                await combine(PartialRecord(topic, partition, read_offset, key, value))
        return hole

    async def _read_back(self, topic: str, partition: int,
                         hole: range) -> list[tuple[int, bytes | None, bytes | None]]:
        """Read ``hole`` in a thread until it succeeds: skipping it would lose it, so the
        agent waits (a warning, then /readyz and the error counter say why)."""
        warned = False
        while True:
            try:
                return await asyncio.to_thread(self._read_offsets, topic, partition, hole)
            except Exception as exc:  # noqa: BLE001 - waited out, reported
                if not warned:
                    log.warning("partials %s:%d: reading back %d..%d failed (%r); retrying "
                                "every %.1f s", topic, partition, hole.start, hole.stop - 1,
                                exc, self._retry_s)
                    warned = True
                self._health.error("costflux.combine", exc)
                await asyncio.sleep(self._retry_s)

"""Partials Faust fetched but never delivered to the agent, read back and applied in order.

See costflux.core.offsets for why a hole means a lost message. Holes are read straight from
the topic (streams.kafka.read_offsets, in a thread) and handed to the agent's combine step
before the message that revealed them, so no later partial of a source makes an earlier
one look like a replay. Faust does not count them as done (streams.faust_transport): the
agent acknowledges them once what it applied from them is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from agents.health import Health
from costflux.core.offsets import OffsetHoles

__all__ = ["HoleFiller", "PartialRecord", "ReadOffsets"]

log = logging.getLogger(__name__)

#: Reads (offset, key, value) of a range of offsets of one partition (blocking).
ReadOffsets = Callable[[str, int, range], list[tuple[int, bytes | None, bytes | None]]]


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

    def __init__(self, read_offsets: ReadOffsets, health: Health, reread: Counter,
                 retry_s: float = 1.0) -> None:
        self._read_offsets = read_offsets
        self._health = health
        self._reread = reread
        self._retry_s = retry_s
        self._holes = OffsetHoles()

    async def before(self, topic: str, partition: int, generation: int, offset: int,
                     combine: Callable[[PartialRecord], Awaitable[None]]) -> range:
        """Combine the offsets skipped just before ``offset``, if any, in order; return them
        (to be acknowledged once their changelog writes are stored)."""
        hole = self._holes.observe(partition, generation, offset)
        if not hole:
            return hole
        log.warning("partials %s:%d: offsets %d..%d were fetched but never delivered; "
                    "reading them back", topic, partition, hole.start, hole.stop - 1)
        self._reread.inc(len(hole))
        while True:
            try:
                records = await asyncio.to_thread(self._read_offsets, topic, partition, hole)
                break
            except Exception as exc:  # noqa: BLE001 - waited out: skipping them would lose them
                self._health.error("costflux.combine", exc)
                await asyncio.sleep(self._retry_s)
        for read_offset, key, value in records:
            if isinstance(key, bytes) and isinstance(value, bytes):
                await combine(PartialRecord(topic, partition, read_offset, key, value))
        return hole

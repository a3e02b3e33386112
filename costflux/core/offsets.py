"""Which offsets of a partition a consumer never saw: the holes between those it did.

Every topic costflux consumes through Faust has contiguous offsets (no compaction, no
transactions), so a jump forward between two messages of one consumer generation means
messages were fetched and lost before the agent got them. Faust's own consumer counts the
hole as acknowledged (its fetch loop takes a jump for a compaction gap), so its committed
offset passed messages nobody applied: one partial short for good, seen after a restart in
tests/integration/test_scale_out.py. The worker's consumer does not
(streams.faust_transport); the agent reads a hole back, applies it first and acknowledges
it (agents.holes). A generation's first messages can be lost the same way: the first one
delivered is compared with the offset the generation began at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OffsetHoles"]


@dataclass(slots=True)
class OffsetHoles:
    """The next offset expected per partition, within one consumer generation."""

    _expected: dict[int, tuple[int, int]] = field(default_factory=dict)

    def starts_generation(self, partition: int, generation: int) -> bool:
        """Whether a message of ``partition`` in ``generation`` would be its first."""
        seen = self._expected.get(partition)
        return seen is None or seen[0] != generation

    def observe(self, partition: int, generation: int, offset: int,
                start: int | None = None) -> range:
        """Record that ``offset`` arrived; return the offsets skipped just before it.

        The first message of a partition in a generation is compared with ``start``, the
        offset the generation began at (the group's committed offset): a consumer can lose
        its first messages too. Unknown (None), it opens no hole. A message at or behind the
        expected offset (a re-delivery after a seek: applying it again is harmless) opens
        none either.
        """
        seen = self._expected.get(partition)
        if seen is None or seen[0] != generation:
            seen = (generation, offset if start is None else start)
        self._expected[partition] = (generation, offset + 1)
        if offset <= seen[1]:
            return range(0)
        return range(seen[1], offset)

"""Whether an agent keeps up with its partitions: behind the log's end and not moving is a stall.

An agent can stop taking messages without raising anything (stop 19 saw one: Faust's
fetcher returned nothing more, flow control active, no error anywhere), and nothing else
tells a worker that is idle because the topic is quiet from one that is stuck with a
backlog. Each check compares, per partition, where the agent is (the next offset it would
take) with where the log ends: a partition behind its end whose position has not moved for
``stall_after_s`` is stalled. A position that moves restarts the clock, as does a partition
caught up and one newly assigned (table recovery after a rebalance counts towards the stall:
the worker serves stale totals meanwhile, which is what not ready means).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Held", "PartitionStall", "Progress", "StallCheck"]


@dataclass(frozen=True, slots=True)
class PartitionStall:
    """A partition behind the end of its log, with how long its position has stood still."""

    partition: int
    position: int
    log_end: int
    still_s: float

    @property
    def behind(self) -> int:
        return self.log_end - self.position

    def describe(self) -> str:
        return (f"partition {self.partition}: {self.behind} behind the log end "
                f"(at offset {self.position} of {self.log_end}), "
                f"nothing taken for {self.still_s:.0f} s")


@dataclass(frozen=True, slots=True)
class Progress:
    """One check's verdict: records behind in all, the partitions stalled, and the longest
    any partition behind its end has stood still (0 when none is behind)."""

    behind: int
    stalled: tuple[PartitionStall, ...]
    longest_still_s: float


@dataclass(slots=True)
class StallCheck:
    """Per partition, the last position seen and since when it has not moved."""

    stall_after_s: float
    _seen: dict[int, tuple[int, float]] = field(default_factory=dict)

    def check(self, now: float, positions: Mapping[int, int],
              log_ends: Mapping[int, int]) -> Progress:
        """``positions``: the next offset the agent would take, per partition it owns and
        knows the position of; ``log_ends``: each partition's end (the next offset written).
        A partition missing from either is not judged, and forgotten: re-assigned later, it
        starts afresh."""
        judged = positions.keys() & log_ends.keys()
        for partition in self._seen.keys() - judged:
            del self._seen[partition]
        behind, stalled, longest = 0, [], 0.0
        for partition in sorted(judged):
            position, log_end = positions[partition], log_ends[partition]
            if log_end <= position:
                # Caught up: the clock starts afresh (a quiet partition's records arriving
                # after an idle hour are not an hour late).
                self._seen[partition] = (position, now)
                continue
            seen = self._seen.get(partition)
            if seen is None or seen[0] != position:  # new, or moved
                seen = self._seen[partition] = (position, now)
            behind += log_end - position
            still = now - seen[1]
            longest = max(longest, still)
            if still >= self.stall_after_s:
                stalled.append(PartitionStall(partition, position, log_end, still))
        return Progress(behind, tuple(stalled), longest)


@dataclass(slots=True)
class Held:
    """How long a condition has held, unbroken, at the checks that saw it (a rebalance that
    never ends: Faust's group join or table recovery can hang, and then no partition is
    assigned for the stall check to judge)."""

    _since: float | None = None

    def observe(self, now: float, holds: bool) -> float:
        if not holds:
            self._since = None
            return 0.0
        if self._since is None:
            self._since = now
        return now - self._since

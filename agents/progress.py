"""The combine agent's progress against its partials partitions: how far behind, and stalls.

An agent that raises is reported (agents.health); one that simply stops taking messages is
not, and the worker keeps serving totals that no longer move. Every few seconds this asks
the broker where this worker's partials partitions end (one ListOffsets request) and
compares that with the next offset the agent would take (costflux.core.progress): two gauges
show it, and /readyz fails, naming the partitions, once one has stood still behind its end
for COSTFLUX_COMBINE_STALL_S.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Set
from typing import Protocol

from faust.types import TP

from agents.health import Health
from agents.metrics import CostMetrics
from costflux.core.progress import Held, StallCheck

__all__ = ["CHECK_INTERVAL_S", "CombineProgress", "Positions"]

log = logging.getLogger(__name__)

#: How often the log ends are read (one request to the broker each).
CHECK_INTERVAL_S = 2.0
#: The /readyz part a stall is reported under (its reason reads "costflux.combine stalled").
_STALLED = "costflux.combine_stalled"


class Positions(Protocol):
    """What the check asks of the worker's consumer (streams.faust_transport)."""

    def assignment(self) -> Set[TP]: ...

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]: ...

    def resume_offset(self, tp: TP) -> int | None: ...


class CombineProgress:
    """Where the agent is per partials partition, and the check behind /readyz and the gauges."""

    def __init__(self, topic: str, consumer: Callable[[], Positions],
                 rebalancing: Callable[[], bool], stall_after_s: float, health: Health,
                 metrics: CostMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._topic = topic
        self._consumer = consumer
        self._rebalancing = rebalancing
        self._in_rebalance = Held()
        self._check = StallCheck(stall_after_s)
        self._health = health
        self._clock = clock
        self._next: dict[int, int] = {}  # partition -> the offset after the last one taken
        self._stalled = False
        self._metrics = metrics

    def took(self, partition: int, offset: int) -> None:
        """The agent is done with ``offset`` (applied, skipped as a replay or dead-lettered)."""
        if offset >= self._next.get(partition, 0):
            self._next[partition] = offset + 1

    async def check(self) -> None:
        now = self._clock()
        rebalancing_s = self._in_rebalance.observe(now, self._rebalancing())
        consumer = self._consumer()
        owned = [tp for tp in consumer.assignment() if tp.topic == self._topic]
        for partition in self._next.keys() - {tp.partition for tp in owned}:
            del self._next[partition]  # revoked: where it resumes next time is the group's
        positions = {tp.partition: position for tp in owned
                     if (position := self._position(consumer, tp)) is not None}
        log_ends = {tp.partition: end for tp, end in
                    (await consumer.highwaters(*owned)).items()} if owned else {}
        progress = self._check.check(now, positions, log_ends)
        self._metrics.combine_behind.set(progress.behind)
        self._metrics.combine_still.set(max(progress.longest_still_s, rebalancing_s))
        problems = [stall.describe() for stall in progress.stalled]
        if rebalancing_s >= self._check.stall_after_s:
            problems.insert(0, f"in a rebalance (group join or table recovery) for "
                               f"{rebalancing_s:.0f} s")
        self._report(problems)

    def _report(self, problems: list[str]) -> None:
        if problems:
            why = "; ".join(problems)
            if not self._stalled:
                log.warning("the combine agent has stopped taking partials (the worker serves "
                            "totals that no longer move; a restart resumes at the committed "
                            "offsets): %s", why)
            self._health.unready(_STALLED, f"costflux.combine stalled: {why}")
        elif self._stalled:
            log.info("the combine agent is taking partials again")
            self._health.recovered(_STALLED)
        self._stalled = bool(problems)

    def _position(self, consumer: Positions, tp: TP) -> int | None:
        # Nothing taken yet in this assignment: it is where the group resumed the partition.
        known = [p for p in (self._next.get(tp.partition), consumer.resume_offset(tp))
                 if p is not None]
        return max(known) if known else None

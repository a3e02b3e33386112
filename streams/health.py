"""What the worker's parts say about themselves: /readyz reasons and error/retry counters.

A part that cannot do its work (Redis unreachable, a timer or an agent that raised) reports
it here instead of dying or stalling silently: /readyz answers 503 naming the part and the
error, and ``costflux_agent_errors_total{agent}`` or ``costflux_dependency_retries_total``
rises. Parts report from the event loop and from the ingest threads, hence the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter

__all__ = ["Health", "guarded"]

log = logging.getLogger(__name__)

#: How long an error that did not repeat keeps the worker unready (a timer or a retry loop
#: clears its problem at once on its next success; an agent error has no "next success").
ERROR_HOLD_S = 30.0


class Health:
    """Problems by part, with when they were last seen, and the counters that go with them."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic,
                 hold_s: float = ERROR_HOLD_S) -> None:
        self._clock = clock
        self._hold_s = hold_s
        self._lock = threading.Lock()
        self._problems: dict[str, tuple[str, float, bool]] = {}  # part -> why, when, sticky
        self.errors = Counter(
            "costflux_agent_errors_total",
            "Unexpected errors raised inside a worker agent, timer or ingest loop", ["agent"],
            registry=registry,
        )
        self.retries = Counter(
            "costflux_dependency_retries_total",
            "Calls to a dependency (Redis) that failed and are retried with backoff",
            ["component", "dependency"], registry=registry,
        )

    def error(self, part: str, exc: BaseException) -> None:
        """``part`` raised: count it; unready until it succeeds again or the hold passes."""
        self.errors.labels(part).inc()
        self._report(part, f"{part} raised {type(exc).__name__}", sticky=False)

    def waiting(self, component: str, dependency: str, exc: BaseException) -> None:
        """``component`` retries a call to ``dependency``: unready until it succeeds."""
        self.retries.labels(component, dependency).inc()
        self._report(component, f"{component} waiting for {dependency}: {type(exc).__name__}",
                     sticky=True)

    def unready(self, part: str, why: str) -> None:
        """``part`` cannot do its work for a reason that is not an exception (a stall):
        unready until it is ``recovered``."""
        self._report(part, why, sticky=True)

    def recovered(self, part: str) -> None:
        with self._lock:
            self._problems.pop(part, None)

    def problems(self) -> list[str]:
        """What keeps the worker unready now, oldest first."""
        now = self._clock()
        with self._lock:
            for part, (_, seen, sticky) in list(self._problems.items()):
                if not sticky and now - seen > self._hold_s:
                    del self._problems[part]
            return [why for why, _, _ in sorted(self._problems.values(), key=lambda p: p[1])]

    def _report(self, part: str, why: str, *, sticky: bool) -> None:
        with self._lock:
            self._problems[part] = (why, self._clock(), sticky)


def guarded(health: Health, name: str,
            step: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer step that reports an error and runs again next time, instead of crashing the
    app (an exception in a Faust timer stops the whole worker) or stopping for good."""

    failing = False

    async def run() -> None:
        nonlocal failing
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - reported, counted, retried at the next tick
            if not failing:  # once per streak: a 0.25 s timer would flood the log
                log.warning("%s failed (retried at every tick until it succeeds): %s: %s",
                            name, type(exc).__name__, exc)
            failing = True
            health.error(name, exc)
            return
        if failing:
            log.info("%s succeeded again", name)
        failing = False
        health.recovered(name)

    return run

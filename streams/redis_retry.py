"""Calls to Redis that wait out an outage instead of failing: backoff until Redis answers.

Ingest (dedup, checkpoints) and the notifier (claims, rate slots) cannot go on without Redis
and must not guess: both wait, and both only retry calls that are safe to repeat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import redis

from costflux.core.retry import Backoff, retry

__all__ = ["REDIS_UNAVAILABLE", "until_redis_answers"]

_T = TypeVar("_T")

#: What an unreachable or too slow Redis raises (BusyLoadingError, a Redis still loading its
#: data after a restart, is a ConnectionError), and a full one (maxmemory reached under
#: noeviction: it refuses a write before making any, so waiting for room is safe).
REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                     redis.exceptions.OutOfMemoryError)
_BACKOFF = Backoff(first_s=0.1, cap_s=5.0)


def until_redis_answers(
    call: Callable[[], _T],
    stopping: threading.Event,
    on_retry: Callable[[Exception, bool], None],
    on_recovered: Callable[[], None] = lambda: None,
) -> _T:
    """``call()``, repeated with backoff (0.1 s doubling to 5 s) while Redis is unavailable.

    ``on_retry(exc, first_of_outage)`` runs before each wait and ``on_recovered()`` once Redis
    answers after an outage. When ``stopping`` is set the last Redis error is raised.
    """
    outage = False

    def retrying(exc: Exception, failures: int) -> None:
        nonlocal outage
        outage = True
        on_retry(exc, failures == 1)

    result = retry(call, lambda exc: isinstance(exc, REDIS_UNAVAILABLE), _BACKOFF,
                   wait=stopping.wait, on_retry=retrying)
    if outage:
        on_recovered()
    return result

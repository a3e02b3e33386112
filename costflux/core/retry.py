"""Retrying a call that fails for a while: capped exponential backoff, with full jitter or not.

One loop for every adapter that waits out a dependency (Redis, a webhook). The caller says
which errors are worth another try; the wait is injectable, so tests run on a fake clock and a
process that is stopping can cut a wait short (``threading.Event.wait`` as the wait).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Backoff", "retry"]

_T = TypeVar("_T")
#: 2**64 times any sensible first wait is past every cap: the exponent stops growing there, so
#: a dependency that stays down for days never overflows a float.
_MAX_DOUBLINGS = 64
_JITTER = random.Random()  # noqa: S311 - spreading retries out, not cryptography


@dataclass(frozen=True, slots=True)
class Backoff:
    """The wait after the n-th failure in a row: ``first_s`` doubling up to ``cap_s``.

    With ``jitter`` the wait is drawn uniformly from [0, that] ("full jitter"), so that
    clients failing together do not retry together.

    >>> backoff = Backoff(first_s=0.1, cap_s=0.5)
    >>> [backoff.delay_s(failures) for failures in range(1, 6)]
    [0.1, 0.2, 0.4, 0.5, 0.5]
    """

    first_s: float
    cap_s: float
    jitter: bool = False

    def __post_init__(self) -> None:
        for name in ("first_s", "cap_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Backoff.{name}: {getattr(self, name)!r} must be >= 0 seconds")

    def delay_s(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after ``failures`` (1 or more) failures in a row."""
        ceiling = min(self.cap_s, self.first_s * 2 ** min(max(failures - 1, 0), _MAX_DOUBLINGS))
        return (rng or _JITTER).uniform(0, ceiling) if self.jitter else ceiling


def _no_report(exc: Exception, failures: int) -> None:
    pass


def retry(
    call: Callable[[], _T],
    retryable: Callable[[Exception], bool],
    backoff: Backoff,
    *,
    attempts: int | None = None,
    wait: Callable[[float], object] = time.sleep,
    on_retry: Callable[[Exception, int], None] = _no_report,
    rng: random.Random | None = None,
) -> _T:
    """``call()`` until it returns; an error ``retryable`` accepts is retried after a wait.

    The last error is raised as is when it is not retryable, when ``attempts`` calls (None:
    no limit) have failed, or when ``wait`` returns True (a set ``threading.Event``'s wait:
    stop retrying). ``on_retry(error, failures)`` runs before each wait.
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"retry: attempts={attempts} must be at least 1")
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not retryable(exc):
                raise
            failures += 1
            if attempts is not None and failures >= attempts:
                raise
            on_retry(exc, failures)
            if wait(backoff.delay_s(failures, rng)) is True:
                raise

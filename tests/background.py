"""Run a test's side action (a producer, a restart) in a thread while the test watches."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def in_background(action: Callable[[], object]) -> threading.Thread:
    """Start ``action`` in a daemon thread and return the thread (join it to wait)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def run_async(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(coroutine)`` in a thread of its own, returning its result or raising its
    exception: a test process that has run the browser tests has Playwright's event loop
    running in the main thread, where ``asyncio.run`` refuses to start."""
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(coroutine))
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]

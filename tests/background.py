"""Run a test's side action (a producer, a restart) in a thread while the test watches."""

from __future__ import annotations

import threading
from collections.abc import Callable


def in_background(action: Callable[[], object]) -> threading.Thread:
    """Start ``action`` in a daemon thread and return the thread (join it to wait)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread

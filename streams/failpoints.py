"""Failpoints: named places in a process where a test can make it crash or freeze.

Off unless ``COSTFLUX_FAILPOINTS`` is set, e.g. ``ingest.after_apply=kill@3`` (SIGKILL this
process the third time it passes ``ingest.after_apply``) or ``ingest.before_apply=stop@1``
(SIGSTOP it there: frozen until a SIGCONT). Several are comma-separated. The fault tests use
them to place a crash at an exact point of a flush; nothing else sets the variable.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

__all__ = ["failpoint"]

log = logging.getLogger(__name__)

_ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def _parse(text: str) -> dict[str, tuple[signal.Signals, int]]:
    points: dict[str, tuple[signal.Signals, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rule = part.partition("=")
        action, _, hit = rule.partition("@")
        if action not in _ACTIONS or not hit.isdigit() or int(hit) < 1:
            raise ValueError(f"COSTFLUX_FAILPOINTS: {part!r} is not name=kill@N or "
                             "name=stop@N (N counts from 1)")
        points[name] = (_ACTIONS[action], int(hit))
    return points


_POINTS = _parse(os.environ.get("COSTFLUX_FAILPOINTS", ""))
_hits: dict[str, int] = {}
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Count a pass through ``name``; at its configured hit, signal this process."""
    if not _POINTS:
        return
    point = _POINTS.get(name)
    if point is None:
        return
    with _lock:
        _hits[name] = hit = _hits.get(name, 0) + 1
    if hit == point[1]:
        log.warning("failpoint %s: hit %d, sending %s to this process", name, hit,
                    point[0].name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), point[0])

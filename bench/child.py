"""What every baseline consumer process shares: its arguments and its done report.

A baseline runs as its own process (so its peak RSS is its own), counts events, and when it
has seen all of them writes one JSON report that the orchestrator polls for. It then keeps
running until the orchestrator has read its memory high-water mark and stops it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

ENV_PREFIX = "BENCH_"


def env(name: str) -> str:
    """One BENCH_* setting (Faust owns argv, so baselines take their settings from the env)."""
    value = os.environ.get(ENV_PREFIX + name)
    if value is None:
        raise SystemExit(f"{ENV_PREFIX}{name} is not set: run this through bench/run.py")
    return value


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write the report atomically: the orchestrator never reads half a file."""
    target = Path(path)
    partial = target.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps({**report, "reported_at": time.time()}))
    partial.replace(target)


class Progress:
    """Counts events and remembers when the first arrived and when the last was done."""

    __slots__ = ("expected", "seen", "first_at", "done_at", "cost_pico", "report_path", "extra")

    def __init__(self, expected: int, report_path: str) -> None:
        self.expected = expected
        self.seen = 0
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.cost_pico = 0
        self.report_path = report_path
        self.extra: dict[str, Any] = {}

    def first(self) -> None:
        if self.first_at is None:
            self.first_at = time.time()

    def check_done(self) -> bool:
        """Write the report once, the first time every expected event has been seen."""
        if self.done_at is None and self.seen >= self.expected:
            self.done_at = time.time()
            write_report(self.report_path, {
                "events": self.seen,
                "first_at": self.first_at,
                "done_at": self.done_at,
                "cost_dollars": self.cost_pico / 1e12,
                **self.extra,
            })
            return True
        return False

"""Pacing: send events into a sink on their event-time schedule, sped up, on an injected clock.

The Kafka producer (``streams.producer.UsageProducer``) is one sink; :class:`ListSink` keeps
what it is sent, for tests and dry runs.

>>> sink = ListSink()
>>> pace([{"ts": "2024-05-01T12:00:00Z"}, {"ts": "2024-05-01T12:00:01Z"}], sink).count
2
>>> len(sink.events)
2
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from costflux.core.trace import parse_trace_time

__all__ = ["EventSink", "ListSink", "ReplayStats", "pace"]

#: While pacing, buffered events are handed on before a sleep unless that was done less than
#: this long ago and the sleep is shorter: it bounds the delay batching adds at low speeds
#: without turning every event into its own message at high ones.
_BATCH_PUSH_INTERVAL_S: Final = 0.05
#: Progress is reported every this many events (and before every sleep): per-event reports
#: would cost more than the replay itself at full speed.
_PROGRESS_EVERY: Final = 1024


class EventSink(Protocol):
    """Where :func:`pace` sends events; ``UsageProducer`` is the real one."""

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue one event."""

    def send_partial_batch(self) -> None:
        """Hand buffered events on now."""


@dataclass
class ListSink:
    """A sink that keeps every event it is sent, in order, and counts the pushes."""

    events: list[Mapping[str, Any]] = field(default_factory=list)
    pushes: int = 0

    def send(self, event: Mapping[str, Any]) -> None:
        """Keep one event."""
        self.events.append(event)

    def send_partial_batch(self) -> None:
        """Count a push; nothing is buffered."""
        self.pushes += 1


@dataclass(frozen=True)
class ReplayStats:
    """What one replay sent: event count, first and last event time, wall-clock seconds."""

    count: int
    first_event_time: datetime | None
    last_event_time: datetime | None
    wall_seconds: float


def pace(
    events: Iterable[Mapping[str, Any]],
    sink: EventSink,
    *,
    speed: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayStats:
    """Send ``events`` to ``sink``, paced by their event times; return what was sent.

    ``speed=0`` sends as fast as possible and never sleeps. ``speed=s > 0`` sends each event
    when ``(ts - first ts) / s`` seconds have passed on ``clock`` since the first was sent: the
    schedule is anchored, so time spent sending is absorbed rather than accumulated, and the
    replay sleeps only while it is ahead. Events earlier than an already-sent one go at once.
    ``on_progress`` is told the count sent so far, now and then and at the end. The caller
    owns the sink, so flushing it is the caller's job.
    """
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError(f"speed must be a finite number >= 0, got {speed}")
    report = on_progress if on_progress is not None else _ignore_progress
    started = clock()
    count = 0
    first_ts: object = None
    last_ts: object = None
    anchor_event: datetime | None = None
    anchor_wall = started
    last_push = started
    for event in events:
        ts = event.get("ts")
        if speed > 0:
            moment = _event_time(event)
            if anchor_event is None:
                anchor_event, anchor_wall = moment, clock()
            else:
                due = anchor_wall + (moment - anchor_event).total_seconds() / speed
                now = clock()
                if due > now:
                    if due - now >= _BATCH_PUSH_INTERVAL_S or (
                        now - last_push >= _BATCH_PUSH_INTERVAL_S
                    ):
                        sink.send_partial_batch()
                        now = last_push = clock()
                    report(count)
                    if due > now:
                        sleep(due - now)
        sink.send(event)
        if count == 0:
            first_ts = ts
        last_ts = ts
        count += 1
        if count % _PROGRESS_EVERY == 0:
            report(count)
    report(count)
    wall = clock() - started
    if count == 0:
        return ReplayStats(0, None, None, wall)
    # Only the ends are parsed when not pacing: full speed should cost no per-event parsing.
    first = _event_time({"ts": first_ts})
    last = _event_time({"ts": last_ts})
    return ReplayStats(count, first, last, wall)


def _event_time(event: Mapping[str, Any]) -> datetime:
    try:
        return parse_trace_time(event.get("ts"))
    except ValueError as exc:
        raise ValueError(f"event {event.get('event_id')!r}: ts {exc}") from None


def _ignore_progress(count: int) -> None:
    del count

"""Pacing without a broker: events into a sink on their event-time schedule, on a fake clock
(and once on the real one)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from costflux.core.trace import format_event_time
from costflux.streams.pacing import ListSink, pace


class RecordingSink:
    """Collects what pacing sends, and when, on a clock the test controls or the real one."""

    def __init__(self, clock: FakeClock | None = None, send_cost: float = 0.0) -> None:
        self.events: list[Mapping[str, Any]] = []
        self.sent_at: list[float] = []
        self.pushes = 0
        self._clock = clock
        self._send_cost = send_cost

    def send(self, event: Mapping[str, Any]) -> None:
        if self._clock is not None:
            self.sent_at.append(self._clock())
            self._clock.now += self._send_cost
        self.events.append(event)

    def send_partial_batch(self) -> None:
        self.pushes += 1


class FakeClock:
    """A monotonic clock that moves only when slept on or told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def synthetic_events(offsets_s: list[float]) -> list[dict[str, Any]]:
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [
        {
            "event_id": f"e{i}",
            "ts": format_event_time(start + timedelta(seconds=offset)),
            "model": "gpt-4",
            "input_tokens": 1,
            "output_tokens": 1,
        }
        for i, offset in enumerate(offsets_s)
    ]


# --- pacing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("speed", [1.0, 3.0])
def test_paced_events_take_event_span_over_speed(speed: float) -> None:
    wall_target = 0.3
    offsets = [wall_target * speed * k / 6 for k in range(7)]
    sink = RecordingSink()

    started = time.monotonic()
    stats = pace(synthetic_events(offsets), sink, speed=speed)
    elapsed = time.monotonic() - started

    assert len(sink.events) == stats.count == 7
    assert wall_target - 0.005 <= elapsed < wall_target + 0.25
    assert stats.wall_seconds == pytest.approx(elapsed, abs=0.05)
    assert stats.last_event_time is not None and stats.first_event_time is not None
    span = stats.last_event_time - stats.first_event_time
    assert span.total_seconds() == pytest.approx(wall_target * speed)


def test_speed_zero_never_sleeps() -> None:
    clock = FakeClock()
    sink = RecordingSink()

    stats = pace(
        synthetic_events([0, 5, 60, 3600]), sink, speed=0, clock=clock, sleep=clock.sleep
    )

    assert clock.sleeps == [] and sink.pushes == 0
    assert stats.count == 4
    assert stats.first_event_time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert stats.last_event_time == datetime(2024, 5, 1, 13, 0, tzinfo=UTC)


def test_pacing_is_anchored_so_send_time_does_not_accumulate() -> None:
    clock = FakeClock()
    # Each send costs 2 ms against 10 ms gaps: a sleep-the-gap loop would drift 2 ms per event.
    sink = RecordingSink(clock, send_cost=0.002)

    pace(
        synthetic_events([k * 0.010 for k in range(50)]),
        sink,
        speed=1.0,
        clock=clock,
        sleep=clock.sleep,
    )

    start = sink.sent_at[0]
    for k, sent in enumerate(sink.sent_at):
        assert sent - start == pytest.approx(k * 0.010, abs=1e-9)


def test_pacing_sleeps_only_when_ahead() -> None:
    clock = FakeClock()
    sink = RecordingSink(clock, send_cost=0.020)

    pace(
        synthetic_events([k * 0.010 for k in range(20)]),
        sink,
        speed=1.0,
        clock=clock,
        sleep=clock.sleep,
    )

    assert clock.sleeps == []


def test_out_of_order_event_is_sent_at_once() -> None:
    clock = FakeClock()
    sink = RecordingSink(clock)

    pace(synthetic_events([0, 10, 4, 12]), sink, speed=2.0, clock=clock, sleep=clock.sleep)

    assert [round(t - sink.sent_at[0], 6) for t in sink.sent_at] == [0, 5, 5, 6]


def test_buffered_events_are_pushed_before_a_long_sleep() -> None:
    clock = FakeClock()
    sink = RecordingSink(clock)

    pace(synthetic_events([0, 1, 2]), sink, speed=1.0, clock=clock, sleep=clock.sleep)

    assert sink.pushes == 2 and clock.sleeps == [1.0, 1.0]


def test_empty_input_and_bad_speed() -> None:
    stats = pace([], RecordingSink(), speed=0)
    assert (stats.count, stats.first_event_time, stats.last_event_time) == (0, None, None)
    with pytest.raises(ValueError):
        pace([], RecordingSink(), speed=-1)


def test_a_list_sink_gets_every_event_in_order() -> None:
    events = synthetic_events([0, 3, 1, 7])
    sink = ListSink()

    stats = pace(events, sink)

    assert sink.events == events and sink.pushes == 0
    assert (stats.count, stats.first_event_time, stats.last_event_time) == (
        4, datetime(2024, 5, 1, 12, 0, tzinfo=UTC), datetime(2024, 5, 1, 12, 0, 7, tzinfo=UTC))


def test_progress_is_reported_every_1024_events_and_at_the_end() -> None:
    reported: list[int] = []

    pace(synthetic_events([0] * 2500), ListSink(), on_progress=reported.append)

    assert reported == [1024, 2048, 2500]


def test_progress_is_reported_before_each_sleep() -> None:
    clock = FakeClock()
    reported: list[int] = []

    pace(synthetic_events([0, 2, 4]), ListSink(), speed=2.0, clock=clock, sleep=clock.sleep,
         on_progress=reported.append)

    assert reported == [1, 2, 3] and clock.sleeps == [1.0, 1.0]


def test_a_bad_event_time_names_the_event_when_pacing() -> None:
    events = synthetic_events([0]) + [{"event_id": "odd", "ts": "soon"}]
    with pytest.raises(ValueError, match="'odd'"):
        pace(events, ListSink(), speed=1.0, clock=FakeClock(), sleep=FakeClock().sleep)

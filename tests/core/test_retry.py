"""The one retry loop: capped exponential backoff, jitter, attempts, stop, on a fake clock."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.core.retry import Backoff, retry
from tests.flaky import Flaky


class FakeClock:
    """A wait that only moves time forward; ``stop_after`` waits it answers True (stop)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self._stop_after = stop_after

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return self._stop_after is not None and len(self.waits) >= self._stop_after


def is_connection_error(exc: Exception) -> bool:
    return isinstance(exc, ConnectionError)


def test_the_wait_doubles_from_the_first_up_to_the_cap() -> None:
    clock = FakeClock()
    flaky = Flaky(*[ConnectionError("down")] * 7)
    result = retry(flaky, is_connection_error, Backoff(first_s=0.1, cap_s=5.0), wait=clock.wait)
    assert (result, flaky.calls) == ("ok", 8)
    assert clock.waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert clock.now == pytest.approx(11.3)


def test_an_error_the_predicate_refuses_is_raised_at_once() -> None:
    clock = FakeClock()
    flaky = Flaky(ConnectionError("down"), KeyError("a bug"))
    with pytest.raises(KeyError, match="a bug"):
        retry(flaky, is_connection_error, Backoff(0.1, 1.0), wait=clock.wait)
    assert (flaky.calls, clock.waits) == (2, [0.1])


def test_the_last_error_is_raised_once_the_attempts_are_spent() -> None:
    clock = FakeClock()
    flaky = Flaky(*(ConnectionError(f"try {n}") for n in range(1, 6)))
    with pytest.raises(ConnectionError, match="try 3"):
        retry(flaky, is_connection_error, Backoff(0.5, 30.0), attempts=3, wait=clock.wait)
    assert (flaky.calls, clock.waits) == (3, [0.5, 1.0])  # no wait after the last attempt


def test_a_wait_that_answers_true_stops_the_retries_with_the_last_error() -> None:
    clock = FakeClock(stop_after=2)
    flaky = Flaky(*(ConnectionError(f"try {n}") for n in range(1, 9)))
    with pytest.raises(ConnectionError, match="try 2"):
        retry(flaky, is_connection_error, Backoff(0.1, 5.0), wait=clock.wait)
    assert flaky.calls == 2


def test_a_set_event_is_a_wait_that_stops_at_once() -> None:
    stopping = threading.Event()
    stopping.set()
    flaky = Flaky(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        retry(flaky, is_connection_error, Backoff(60.0, 60.0), wait=stopping.wait)
    assert flaky.calls == 1


def test_each_retry_is_reported_before_its_wait_with_the_failures_so_far() -> None:
    clock = FakeClock()
    reported: list[tuple[str, int, int]] = []
    retry(Flaky(ConnectionError("a"), ConnectionError("b")), is_connection_error,
          Backoff(1.0, 1.0), wait=clock.wait,
          on_retry=lambda exc, failures: reported.append((str(exc), failures, len(clock.waits))))
    assert reported == [("a", 1, 0), ("b", 2, 1)]


def test_a_call_that_succeeds_at_once_never_waits() -> None:
    clock = FakeClock()
    assert retry(lambda: 42, is_connection_error, Backoff(1.0, 1.0), wait=clock.wait) == 42
    assert clock.waits == []


@given(st.integers(min_value=1, max_value=10_000), st.integers(min_value=0, max_value=2**32))
def test_full_jitter_stays_within_zero_and_the_capped_wait(failures: int, seed: int) -> None:
    backoff = Backoff(first_s=0.5, cap_s=30.0, jitter=True)
    ceiling = Backoff(first_s=0.5, cap_s=30.0).delay_s(failures)
    assert 0.0 <= backoff.delay_s(failures, random.Random(seed)) <= ceiling <= 30.0


def test_jitter_draws_from_the_given_generator() -> None:
    backoff = Backoff(first_s=1.0, cap_s=8.0, jitter=True)
    draws = [backoff.delay_s(n, random.Random(7)) for n in (1, 2, 3, 4, 5)]
    expected = [random.Random(7).uniform(0, ceiling) for ceiling in (1.0, 2.0, 4.0, 8.0, 8.0)]
    assert draws == expected


def test_days_of_failures_do_not_overflow_the_wait() -> None:
    assert Backoff(first_s=0.1, cap_s=5.0).delay_s(1_000_000) == 5.0


@pytest.mark.parametrize(("first_s", "cap_s", "field"), [(-1.0, 1.0, "first_s"),
                                                         (0.1, float("nan"), "cap_s")])
def test_a_negative_or_nan_wait_is_refused_naming_the_field(
    first_s: float, cap_s: float, field: str
) -> None:
    with pytest.raises(ValueError, match=f"Backoff.{field}"):
        Backoff(first_s, cap_s)


def test_fewer_than_one_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempts=0"):
        retry(lambda: 1, is_connection_error, Backoff(1.0, 1.0), attempts=0)

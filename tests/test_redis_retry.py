"""until_redis_answers: the shared retry loop with Redis's errors, backoff and hooks."""

from __future__ import annotations

import threading

import pytest
import redis

from costflux.streams.redis_retry import until_redis_answers
from tests.flaky import Flaky


def test_an_outage_is_waited_out_reported_once_as_first_and_its_end_announced() -> None:
    retries: list[tuple[str, bool]] = []
    recovered: list[bool] = []
    call = Flaky(redis.exceptions.ConnectionError("refused"),
                  redis.exceptions.TimeoutError("slow"))
    answer = until_redis_answers(call, threading.Event(),
                                 lambda exc, first: retries.append((str(exc), first)),
                                 lambda: recovered.append(True))
    assert (answer, call.calls) == ("ok", 3)
    assert retries == [("refused", True), ("slow", False)]
    assert recovered == [True]


def test_no_outage_no_hooks() -> None:
    recovered: list[bool] = []
    assert until_redis_answers(Flaky(), threading.Event(), pytest.fail,
                               lambda: recovered.append(True)) == "ok"
    assert recovered == []


def test_a_stopping_worker_gets_the_redis_error() -> None:
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(redis.exceptions.ConnectionError, match="refused"):
        until_redis_answers(Flaky(redis.exceptions.ConnectionError("refused")), stopping,
                            lambda exc, first: None)


def test_an_error_that_waiting_cannot_fix_is_raised_at_once() -> None:
    call = Flaky(redis.exceptions.ResponseError("WRONGTYPE"))
    with pytest.raises(redis.exceptions.ResponseError):
        until_redis_answers(call, threading.Event(), pytest.fail)
    assert call.calls == 1

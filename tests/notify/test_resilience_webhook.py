"""Slack that answers too slowly: a real HTTP server on 127.0.0.1 that holds the request
longer than the client's timeout, then 5xx and timeouts mixed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from costflux.streams.webhook import RetryPolicy, post_json
from tests.notify.receiver import SECRET

TIMEOUT_S = 0.5
FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05, timeout_s=TIMEOUT_S)


class SlowReceiver:
    """Answers each POST after the next scripted delay with the next scripted status."""

    def __init__(self, script: list[tuple[float, int]]) -> None:
        self.script = list(script)
        self.attempts: list[float] = []
        self.accepted = 0  # 200s sent back (whether or not the client still listened)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.attempts.append(time.monotonic())
                    delay, status = receiver.script.pop(0) if receiver.script else (0.0, 200)
                receiver._closing.wait(delay)  # hangs, like a webhook endpoint under load
                if status == 200:
                    with receiver._lock:
                        receiver.accepted += 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up and closed the connection

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/{SECRET}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_receiver() -> Iterator[type[SlowReceiver]]:
    made: list[SlowReceiver] = []

    class Made(SlowReceiver):
        def __init__(self, script: list[tuple[float, int]]) -> None:
            super().__init__(script)
            made.append(self)

    yield Made
    for receiver in made:
        receiver.close()


def test_a_webhook_that_hangs_past_the_timeout_is_retried_and_delivered(
    slow_receiver: type[SlowReceiver],
) -> None:
    # The hung request ends in a 503, so only the retry is accepted.
    receiver = slow_receiver([(TIMEOUT_S * 4, 503), (0.0, 200)])
    started = time.monotonic()
    delivery = post_json(receiver.url, {"text": "x"}, FAST)
    elapsed = time.monotonic() - started
    assert (delivery.outcome, delivery.status, delivery.requests) == ("delivered", 200, 2)
    # The client waited out its own timeout, not the server's hang.
    assert TIMEOUT_S <= elapsed < TIMEOUT_S * 4
    assert len(receiver.attempts) == 2


def test_a_webhook_that_always_hangs_is_given_up_after_bounded_attempts(
    slow_receiver: type[SlowReceiver],
) -> None:
    receiver = slow_receiver([(TIMEOUT_S * 6, 200)] * FAST.attempts)
    started = time.monotonic()
    delivery = post_json(receiver.url, {"text": "x"}, FAST)
    elapsed = time.monotonic() - started
    assert (delivery.outcome, delivery.status, delivery.requests) == ("gave_up", None, 3)
    assert delivery.detail == "no answer: TimeoutError"
    assert SECRET not in repr(delivery)
    # attempts x timeout plus the capped backoffs: bounded, whatever the server does.
    assert FAST.attempts * TIMEOUT_S <= elapsed < FAST.attempts * (TIMEOUT_S + FAST.cap_s) + 2


def test_timeouts_and_5xx_mixed_end_in_one_delivery(slow_receiver: type[SlowReceiver]) -> None:
    policy = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, timeout_s=TIMEOUT_S)
    receiver = slow_receiver([(0.0, 502), (TIMEOUT_S * 3, 503), (0.0, 500), (0.0, 200)])
    delivery = post_json(receiver.url, {"text": "x"}, policy)
    assert (delivery.outcome, delivery.status, delivery.requests) == ("delivered", 200, 4)
    time.sleep(TIMEOUT_S * 3)  # the hung request has ended by now
    assert receiver.accepted == 1

"""post_json through httpx.MockTransport: what it sends, how it waits, what it never shows."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import httpx
import orjson
import pytest

from costflux.streams.webhook import RetryPolicy, post_json
from tests.notify.receiver import SECRET

URL = f"https://hooks.slack.test/services/T0/B0/{SECRET}"
POLICY = RetryPolicy(attempts=4, base_s=0.5, cap_s=3.0, timeout_s=2.0)
Answer = httpx.Response | Exception


def scripted(*answers: Answer) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that answers each request with the next of ``answers`` (an exception is
    raised, as a failed connection would be); the requests it saw."""
    seen: list[httpx.Request] = []
    queue: Iterator[Answer] = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = next(queue)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def _no_sleep(seconds: float) -> None:
    pass


def refused() -> httpx.ConnectError:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as exc:
        try:
            raise httpx.ConnectError(str(exc)) from exc
        except httpx.ConnectError as mapped:
            return mapped


def test_the_payload_is_posted_as_json_once() -> None:
    transport, seen = scripted(httpx.Response(200, text="ok"))
    delivery = post_json(URL, {"text": "spend ↑"}, POLICY, sleep=_no_sleep, transport=transport)
    assert (delivery.outcome, delivery.status, delivery.detail, delivery.requests) == (
        "delivered", 200, "ok", 1)
    ((request,),) = [seen]
    assert (request.method, str(request.url)) == ("POST", URL)
    assert request.headers["Content-Type"] == "application/json"
    assert orjson.loads(request.content) == {"text": "spend ↑"}


def test_5xx_and_no_answer_back_off_with_full_jitter_then_give_up() -> None:
    transport, seen = scripted(httpx.Response(503), refused(), httpx.ReadTimeout("slow"),
                               httpx.Response(502, text="bad gateway"))
    waits: list[float] = []
    delivery = post_json(URL, {}, POLICY, sleep=waits.append, rng=random.Random(3),
                         transport=transport)
    assert (delivery.outcome, delivery.status, delivery.requests) == ("gave_up", 502, 4)
    assert delivery.detail == "HTTP 502 Bad Gateway"
    jitter = random.Random(3)
    assert waits == [POLICY.backoff_s(failures, jitter) for failures in (1, 2, 3)]
    assert all(0 <= wait <= min(POLICY.cap_s, POLICY.base_s * 2**n)
               for n, wait in enumerate(waits, 1))
    assert len(seen) == 4


@pytest.mark.parametrize(("error", "detail"), [
    (refused(), "no answer: ConnectionRefusedError"),
    (httpx.ConnectTimeout("timed out"), "no answer: TimeoutError"),
    (httpx.RemoteProtocolError("server hung up"), "no answer: RemoteProtocolError"),
])
def test_no_answer_names_its_cause_and_never_the_url(error: Exception, detail: str) -> None:
    transport, _ = scripted(*[error] * POLICY.attempts)
    delivery = post_json(URL, {}, POLICY, sleep=_no_sleep, transport=transport)
    assert (delivery.outcome, delivery.status, delivery.detail) == ("gave_up", None, detail)
    assert SECRET not in repr(delivery)


def test_429_waits_do_not_count_as_failures() -> None:
    transport, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429),  # no Retry-After: a second
        httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}),
        httpx.Response(429, headers={"Retry-After": "9999"}),  # capped
        httpx.Response(200),
    )
    waits: list[float] = []
    delivery = post_json(URL, {}, RetryPolicy(attempts=1, max_retry_after_s=60.0),
                         sleep=waits.append, transport=transport)
    assert (delivery.outcome, delivery.requests, len(seen)) == ("delivered", 5, 5)
    assert waits == [7.0, 1.0, 1.0, 60.0]


@pytest.mark.parametrize("status", [301, 400, 403, 404, 410])
def test_a_redirect_or_a_4xx_is_rejected_without_a_retry(status: int) -> None:
    transport, seen = scripted(
        httpx.Response(status, headers={"Location": "https://elsewhere.test/"}),
        httpx.Response(200))
    delivery = post_json(URL, {}, POLICY, sleep=_no_sleep, transport=transport)
    assert (delivery.outcome, delivery.status, delivery.requests) == ("rejected", status, 1)
    assert delivery.detail.startswith(f"HTTP {status} ")
    assert [str(r.url) for r in seen] == [URL]  # a redirect is not followed


def test_the_request_log_shows_the_host_and_not_the_secret_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # On the httpx logger itself: an import of litellm (another test) sets it to WARNING.
    caplog.set_level(logging.DEBUG, logger="httpx")
    transport, _ = scripted(httpx.Response(404), httpx.Response(200))
    post_json(URL, {"text": "x"}, POLICY, sleep=_no_sleep, transport=transport)
    assert "hooks.slack.test" in caplog.text
    assert SECRET not in caplog.text and "/services/" not in caplog.text


class _FormatsFirst(logging.Filter):
    """As LiteLLM's filter on the httpx logger does: the arguments formatted into the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage(), ()
        return True


def test_the_request_log_hides_the_path_when_another_filter_formatted_it_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="httpx")
    request_log = logging.getLogger("httpx")
    ours = request_log.filters[:]
    request_log.filters[:] = [_FormatsFirst(), *ours]
    try:
        transport, _ = scripted(httpx.Response(200))
        post_json(f"https://bot:{SECRET}@hooks.slack.test/services/{SECRET}?t={SECRET}",
                  {"text": "x"}, POLICY, sleep=_no_sleep, transport=transport)
    finally:
        request_log.filters[:] = ours
    assert "POST https://hooks.slack.test/…" in caplog.text
    assert SECRET not in caplog.text and "/services/" not in caplog.text


def test_a_url_that_is_not_valid_is_refused_without_being_shown() -> None:
    with pytest.raises(ValueError, match="webhook URL") as raised:
        post_json(f"https://hooks.slack.test/{SECRET}\x00", {})
    assert SECRET not in str(raised.value)

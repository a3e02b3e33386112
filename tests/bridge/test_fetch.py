"""fetch_metrics_page through httpx.MockTransport: each failure's reason code, and the limits."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from costflux.streams.bridge import MAX_PAGE_BYTES, ScrapeError, fetch_metrics_page
from tests.bridge.pages import VLLM_TEXT

URL = "http://vllm.test:8000/metrics"


def answering(status_code: int, **response: Any) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status_code, **response))


def failing(error: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return httpx.MockTransport(handler)


def reason_of(transport: httpx.MockTransport) -> ScrapeError:
    with pytest.raises(ScrapeError) as caught:
        fetch_metrics_page(URL, 2.0, transport)
    return caught.value


def test_the_page_is_asked_for_in_the_classic_text_format() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=VLLM_TEXT)

    assert fetch_metrics_page(URL, 2.0, httpx.MockTransport(handler)) == VLLM_TEXT
    ((request,),) = [seen]
    assert (request.method, str(request.url)) == ("GET", URL)
    assert request.headers["Accept"].startswith("text/plain;version=0.0.4")


def test_a_redirect_is_followed_as_before() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(308, headers={"Location": "/v2/metrics"})
        return httpx.Response(200, text="up 1\n")

    assert fetch_metrics_page(URL, 2.0, httpx.MockTransport(handler)) == "up 1\n"


def test_a_gzipped_page_is_read_decompressed() -> None:
    transport = answering(200, content=gzip.compress(VLLM_TEXT.encode()),
                          headers={"Content-Encoding": "gzip"})
    assert fetch_metrics_page(URL, 2.0, transport) == VLLM_TEXT


@pytest.mark.parametrize(("transport", "reason", "detail"), [
    (answering(503, text="loading"), "http_status", "answered 503 Service Unavailable"),
    (answering(304), "http_status", "answered 304 Not Modified"),
    (answering(200, content=b"\xff\xfe up 1"), "unparsable", "not UTF-8"),
    (answering(200, content=b"garbage", headers={"Content-Encoding": "gzip"}),
     "unparsable", "Content-Encoding"),
    (failing(httpx.ConnectError("[Errno 111] Connection refused")), "connection",
     "Connection refused"),
    (failing(httpx.RemoteProtocolError("peer closed connection")), "connection", "peer closed"),
    (failing(httpx.ReadTimeout("timed out")), "timeout", "no answer within 2 s"),
    (failing(httpx.ConnectTimeout("timed out")), "timeout", "no answer within 2 s"),
])
def test_each_failure_has_its_reason_code(
    transport: httpx.MockTransport, reason: str, detail: str
) -> None:
    error = reason_of(transport)
    assert error.reason == reason and detail in error.detail and URL in error.detail


def test_a_redirect_loop_is_an_http_status_error() -> None:
    loop = answering(302, headers={"Location": URL})
    assert reason_of(loop).reason == "http_status"


def test_a_page_over_the_limit_is_refused_without_reading_it_all() -> None:
    chunk = b"x" * (1024 * 1024)
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            sent.append(len(chunk))
            yield chunk

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=endless()))
    error = reason_of(transport)
    assert (error.reason, f"page over {MAX_PAGE_BYTES} bytes" in error.detail) == (
        "unparsable", True)
    assert sum(sent) <= MAX_PAGE_BYTES + len(chunk)

"""Post JSON to a webhook (Slack's incoming webhooks) with the retries a good client owes it.

- 429: wait what ``Retry-After`` says (capped), then try again; it is not a failure. A
  caller sharing the webhook's rate limit with other processes may stretch that wait
  (``on_retry_after``), so its retry lands in a slot of the shared schedule.
- 5xx, timeouts, refused connections: exponential backoff with full jitter, a bounded number
  of attempts, then give up (the caller keeps the alert for its next attempt).
- any other 4xx, or a redirect: permanent (a revoked, mistyped or moved webhook); no retry
  loop: the caller sends the alert to the dead-letter topic. A redirect is not followed: the
  alert would go to an address nobody configured.

The URL is a secret (it is the credential): it never appears in a result, an exception or a
log line; results carry the status code and a short reason only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import orjson

from costflux.core.retry import Backoff, retry
from costflux.http_clients import client, no_answer_reason

__all__ = ["Delivery", "RetryPolicy", "post_json"]

Outcome = Literal["delivered", "rejected", "gave_up"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6  # 5xx / network failures before giving up (429s do not count)
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 300.0
    timeout_s: float = 10.0

    @property
    def backoff(self) -> Backoff:
        """Full jitter: uniform in [0, min(cap, base x 2^failures)]."""
        return Backoff(first_s=2 * self.base_s, cap_s=self.cap_s, jitter=True)

    def backoff_s(self, failures: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base x 2^failures)]."""
        return self.backoff.delay_s(failures, rng)


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    status: int | None  # the last HTTP status, None when no answer came
    detail: str  # no URL, ever
    requests: int


def post_json(
    url: str,
    payload: object,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry_after: Callable[[float], float] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Delivery:
    """POST ``payload`` as JSON until it is delivered, rejected, or the attempts run out.

    ``on_retry_after(wait)`` is told each 429's wait and returns the wait to use instead
    (never less than ``wait``): the notifier pushes its instances' shared slot past it.
    """
    if not url.startswith(("https://", "http://")):
        raise ValueError("webhook URL: must start with https:// (the URL itself is not shown)")
    try:
        httpx.URL(url)
    except httpx.InvalidURL:
        raise ValueError("webhook URL: not a valid URL (the URL itself is not shown)") from None
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    body = orjson.dumps(payload)
    requests = 0

    def attempt(http: httpx.Client) -> Delivery:
        """Post until an answer that is not a 429; a 5xx or no answer raises _NotDelivered."""
        nonlocal requests
        while True:
            requests += 1
            status, retry_after, detail = _post_once(http, url, body)
            if status is not None and 200 <= status < 300:
                return Delivery("delivered", status, "ok", requests)
            if status == 429:
                wait = min(retry_after if retry_after is not None else 1.0,
                           policy.max_retry_after_s)
                if on_retry_after is not None:
                    wait = max(wait, on_retry_after(wait))
                sleep(wait)
                continue
            if status is not None and status < 500:
                return Delivery("rejected", status, detail, requests)
            raise _NotDelivered(status, detail)

    with client(timeout_s=policy.timeout_s, headers={"Content-Type": "application/json"},
                transport=transport) as http:
        try:
            return retry(lambda: attempt(http), lambda exc: isinstance(exc, _NotDelivered),
                         policy.backoff, attempts=policy.attempts, wait=sleep, rng=rng)
        except _NotDelivered as failed:
            return Delivery("gave_up", failed.status, failed.detail, requests)


class _NotDelivered(Exception):
    """A 5xx or no answer: worth another try. Its detail holds no URL."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _post_once(http: httpx.Client, url: str, body: bytes) -> tuple[int | None, float | None, str]:
    try:
        response = http.post(url, content=body)
    except httpx.TransportError as exc:
        return None, None, f"no answer: {no_answer_reason(exc)}"
    status = response.status_code
    if 200 <= status < 300:
        return status, None, "ok"
    return status, _seconds(response.headers.get("Retry-After")), (
        f"HTTP {status} {response.reason_phrase}")


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None  # an HTTP date: rare for webhooks; the default wait applies

"""Post JSON to a webhook (Slack's incoming webhooks) with the retries a good client owes it.

- 429: wait what ``Retry-After`` says (capped), then try again; it is not a failure. A
  caller sharing the webhook's rate limit with other processes may stretch that wait
  (``on_retry_after``), so its retry lands in a slot of the shared schedule.
- 5xx, timeouts, refused connections: exponential backoff with full jitter, a bounded number
  of attempts, then give up (the caller keeps the alert for its next attempt).
- any other 4xx: permanent (a revoked or mistyped webhook); no retry loop: the caller sends
  the alert to the dead-letter topic.

The URL is a secret (it is the credential): it never appears in a result, an exception or a
log line; results carry the status code and a short reason only.
"""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

__all__ = ["Delivery", "RetryPolicy", "post_json"]

Outcome = Literal["delivered", "rejected", "gave_up"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6  # 5xx / network failures before giving up (429s do not count)
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 300.0
    timeout_s: float = 10.0

    def backoff_s(self, failures: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base x 2^failures)]."""
        return rng.uniform(0, min(self.cap_s, self.base_s * 2**failures))


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
) -> Delivery:
    """POST ``payload`` as JSON until it is delivered, rejected, or the attempts run out.

    ``on_retry_after(wait)`` is told each 429's wait and returns the wait to use instead
    (never less than ``wait``): the notifier pushes its instances' shared slot past it.
    """
    if not url.startswith(("https://", "http://")):
        raise ValueError("webhook URL: must start with https:// (the URL itself is not shown)")
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    body = orjson.dumps(payload)
    failures = requests = 0
    while True:
        requests += 1
        status, retry_after, detail = _post_once(url, body, policy.timeout_s)
        if status is not None and 200 <= status < 300:
            return Delivery("delivered", status, "ok", requests)
        if status == 429:
            wait = min(retry_after if retry_after is not None else 1.0, policy.max_retry_after_s)
            if on_retry_after is not None:
                wait = max(wait, on_retry_after(wait))
            sleep(wait)
            continue
        if status is not None and 400 <= status < 500:
            return Delivery("rejected", status, detail, requests)
        failures += 1
        if failures >= policy.attempts:
            return Delivery("gave_up", status, detail, requests)
        sleep(policy.backoff_s(failures, rng))


def _post_once(url: str, body: bytes, timeout_s: float) -> tuple[int | None, float | None, str]:
    request = urllib.request.Request(  # noqa: S310 - post_json allows http(s) only
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), None, "ok"
    except urllib.error.HTTPError as exc:
        return exc.code, _seconds(exc.headers.get("Retry-After")), f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, None, f"no answer: {type(reason).__name__}"


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None  # an HTTP date: rare for webhooks; the default wait applies

"""Slack delivery against a real HTTP server on 127.0.0.1 that answers as scripted."""

from __future__ import annotations

import json
import logging
import time

import pytest

from costflux.core.slack import slack_message
from costflux.streams.webhook import RetryPolicy, post_json
from tests.notify.receiver import Receiver, make_alert

FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05, timeout_s=2.0)


def test_429_with_retry_after_is_honoured_and_delivered_once(
    receiver_for: type[Receiver],
) -> None:
    receiver = receiver_for([(429, {"Retry-After": "2"}), (200, {})])
    started = time.monotonic()
    delivery = post_json(receiver.url, slack_message(make_alert()), FAST)
    assert (delivery.outcome, delivery.status, delivery.requests) == ("delivered", 200, 2)
    ((arrived, _),) = receiver.received
    assert arrived - started >= 2.0


def test_5xx_and_refused_connections_are_retried_with_backoff_then_given_up(
    receiver_for: type[Receiver],
) -> None:
    receiver = receiver_for([(503, {}), (500, {}), (200, {})])
    delivery = post_json(receiver.url, {"text": "x"}, FAST)
    assert (delivery.outcome, delivery.requests, len(receiver.received)) == ("delivered", 3, 1)
    failing = receiver_for([(500, {})] * 5)
    given_up = post_json(failing.url, {"text": "x"}, FAST)
    assert (given_up.outcome, given_up.status, given_up.requests) == ("gave_up", 500, 3)
    closed = receiver_for([])
    url = closed.url
    closed.close()
    refused = post_json(url, {"text": "x"}, FAST)
    assert (refused.outcome, refused.status) == ("gave_up", None)


def test_a_permanent_4xx_is_rejected_without_a_retry_and_the_url_is_never_shown(
    receiver_for: type[Receiver], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = receiver_for([(404, {}), (200, {})])
    delivery = post_json(receiver.url, {"text": "x"}, FAST)
    assert (delivery.outcome, delivery.status, delivery.requests) == ("rejected", 404, 1)
    assert receiver.received == []
    assert "s3cr3t" not in repr(delivery) and "s3cr3t" not in caplog.text
    with pytest.raises(ValueError, match="must start with https://") as raised:
        post_json("file:///etc/s3cr3t", {})
    assert "s3cr3t" not in str(raised.value)


def test_label_values_arrive_escaped_for_slack(receiver_for: type[Receiver]) -> None:
    receiver = receiver_for([])
    post_json(receiver.url, slack_message(make_alert("<!channel> & <https://evil|x>")), FAST)
    ((_, body),) = receiver.received
    message = json.loads(body)
    text = json.dumps(message)
    assert "<!channel>" not in text and "<https://evil|x>" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil|x&gt;" in text
    assert message["blocks"][0]["text"]["text"] == "FIRING: CostSpike (warning)"


def test_a_caller_may_stretch_the_wait_after_a_429(receiver_for: type[Receiver]) -> None:
    receiver = receiver_for([(429, {"Retry-After": "1"}), (200, {})])
    waits: list[float] = []
    delivery = post_json(receiver.url, {"text": "x"}, FAST, sleep=waits.append,
                         on_retry_after=lambda wait: wait + 0.5)
    assert (delivery.outcome, waits) == ("delivered", [1.5])

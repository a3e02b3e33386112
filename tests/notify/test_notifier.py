"""``costflux notify`` against the embedded broker, the session Redis and a real receiver."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from confluent_kafka import Producer

from costflux.agents.notify import Notifier, NotifyOptions
from costflux.agents.notify_redis import SlotLimiter, claim_key, slot_key
from costflux.cli import main
from costflux.embedded import free_port
from costflux.schemas.alert import AlertEvent
from costflux.schemas.deadletter import DeadLetterRecord
from costflux.settings import Settings
from costflux.streams.kafka import consumer_config, ensure_topics, producer_config
from costflux.streams.webhook import RetryPolicy
from tests.integration.test_producer import read_all
from tests.notify.receiver import SECRET, Receiver, make_alert

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.05, timeout_s=2.0)
INTERVAL_S = 0.3


class Instances:
    """Notifiers running in threads of this process, each with its own clients."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.running: dict[str, tuple[Notifier, threading.Thread, redis.Redis]] = {}
        self.failures: list[BaseException] = []

    def start(self, settings: Settings, url: str, group: str | None = None) -> Notifier:
        options = NotifyOptions(
            topic=settings.topic_alerts, deadletter_topic=settings.topic_deadletter,
            namespace=settings.consumer_group, webhook_url=url,
            min_interval_s=settings.notify_min_interval_s, policy=FAST, poll_s=0.05,
        )
        client = redis.Redis.from_url(self.redis_url)
        notifier = Notifier(options, consumer_config(settings, group or settings.consumer_group),
                            producer_config(settings), client)

        def run() -> None:
            try:
                notifier.run()
            except BaseException as exc:
                self.failures.append(exc)

        thread = threading.Thread(target=run, name=notifier.instance)
        thread.start()
        self.running[notifier.instance] = (notifier, thread, client)
        return notifier

    def stop(self, notifier: Notifier) -> None:
        """Stop one and wait until it has left its consumer group."""
        _, thread, client = self.running.pop(notifier.instance)
        notifier.stop()
        thread.join(30)
        client.close()


@pytest.fixture
def instances(redis_url: str) -> Iterator[Instances]:
    """Start notifiers; stop them after the test and fail it on their errors."""
    made = Instances(redis_url)
    yield made
    for notifier, _, _ in list(made.running.values()):
        made.stop(notifier)
    assert not made.failures, made.failures


def topics(settings: Settings) -> Settings:
    ensure_topics(settings, {settings.topic_alerts: settings.topic_partitions,
                             settings.topic_deadletter: settings.topic_partitions})
    return settings


def publish(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(producer_config(settings))
    for key, value in messages:
        producer.produce(settings.topic_alerts, value=value, key=key)
    assert producer.flush(10) == 0


def as_message(alert: AlertEvent, key: str | None = None) -> tuple[bytes | None, bytes]:
    return (key or alert.alert_id).encode(), alert.model_dump_json().encode()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0,
             state: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out {state()}"
        time.sleep(0.05)


def notices(receiver: Receiver) -> list[tuple[str, str, str]]:
    """(alert_id, header, text) of each accepted post, read back from the Slack payload."""
    out = []
    for _, body in receiver.received:
        message = json.loads(body)
        alert_id = message["blocks"][1]["fields"][3]["text"].split("\n")[1]
        out.append((alert_id, message["blocks"][0]["text"]["text"], message["text"]))
    return out


def test_429_retry_after_delays_the_single_post_and_holds_every_instance_back(
    settings_for: Callable[..., Settings], instances: Instances,
    receiver_for: type[Receiver], redis_client: redis.Redis,
) -> None:
    settings = topics(settings_for(notify_min_interval_s=INTERVAL_S, topic_partitions=1))
    receiver = receiver_for([(429, {"Retry-After": "2"}), (200, {})])
    publish(settings, [as_message(make_alert(team="<!channel>"))])
    instances.start(settings, receiver.url)
    wait_for(lambda: len(receiver.attempts) == 1)
    time.sleep(0.2)  # the 429's answer reaches the notifier, which pushes the shared slot
    other = SlotLimiter(redis_client, slot_key(settings.consumer_group, receiver.url), INTERVAL_S)
    # Another instance's next slot comes after the Retry-After and the retry's own interval.
    assert time.monotonic() + other.reserve() - receiver.attempts[0] >= 2.0 + INTERVAL_S - 0.05
    wait_for(lambda: len(receiver.received) == 1)
    time.sleep(0.5)
    ((arrived, body),) = receiver.received
    assert len(receiver.attempts) == 2 and arrived - receiver.attempts[0] >= 2.0
    assert b"<!channel>" not in body and b"&lt;!channel&gt;" in body


def test_a_notice_claimed_by_a_crashed_instance_is_posted_once_its_lease_ends(
    settings_for: Callable[..., Settings], instances: Instances,
    receiver_for: type[Receiver], redis_client: redis.Redis,
) -> None:
    settings = topics(settings_for(topic_partitions=1))
    receiver = receiver_for([])
    notifier = instances.start(settings, receiver.url)
    wait_for(lambda: bool(notifier.partitions))
    alert = make_alert()
    key = claim_key(settings.consumer_group, alert.alert_id, alert.state, alert.repeat)
    redis_client.set(key, "claimed:crashed-instance", px=1500)  # it died mid-post
    claimed = time.monotonic()
    publish(settings, [as_message(alert)] * 2)
    wait_for(lambda: notifier.stats.handled == 2)
    ((arrived, _),) = receiver.received
    assert arrived - claimed >= 1.5 and redis_client.get(key) == b"delivered"


def test_two_instances_duplicates_and_restarts_post_each_notice_once_and_spaced(
    settings_for: Callable[..., Settings], instances: Instances, receiver_for: type[Receiver],
) -> None:
    settings = topics(settings_for(notify_min_interval_s=INTERVAL_S, topic_partitions=4))
    receiver = receiver_for([])
    transitions = (("firing", 0), ("firing", 1), ("resolved", 0))
    alerts = [make_alert(alert_id=f"{n:032x}", state=state, repeat=repeat)
              for n in range(3) for state, repeat in transitions]
    # Each notice twice, under two keys: the copies land on different partitions, so both
    # instances hold one at the same time.
    twice = [as_message(a) for a in alerts] + [as_message(a, a.alert_id + "copy") for a in alerts]
    first = instances.start(settings, receiver.url)
    second = instances.start(settings, receiver.url)
    wait_for(lambda: bool(first.partitions) and bool(second.partitions))  # see the restart
    publish(settings, twice)
    wait_for(lambda: len(receiver.received) >= 3)
    # A restart, mid-stream: its partitions move to the survivor and back. It has left before
    # its successor joins: Tansu (not Kafka) can wedge a group for minutes when a member
    # leaves while another joins. Instances overlapping on one notice: the copies above.
    instances.stop(first)
    restarted = instances.start(settings, receiver.url)
    publish(settings, [as_message(a) for a in alerts])  # and a third copy after the restart
    members = (first, second, restarted)
    wait_for(lambda: sum(n.stats.handled for n in members) >= 3 * len(alerts),
             state=lambda: [n.stats for n in members])
    time.sleep(0.5)
    assert len(receiver.received) == len(alerts)
    assert first.stats.handled and second.stats.handled  # both took part
    posted = notices(receiver)
    assert Counter(posted).most_common(1)[0][1] == 1
    assert {p[0] for p in posted} == {a.alert_id for a in alerts}
    times = [t for t, _ in receiver.received]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= INTERVAL_S - 0.03, gaps
    # A replay from the start (a new consumer group: no committed offsets) posts nothing.
    replay = instances.start(settings, receiver.url, group=settings.consumer_group + "-replay")
    wait_for(lambda: replay.stats.handled == 3 * len(alerts))
    assert (replay.stats.duplicates, len(receiver.received)) == (3 * len(alerts), len(alerts))


def test_rejected_unavailable_and_invalid_alerts_are_dead_lettered_without_the_url(
    settings_for: Callable[..., Settings], instances: Instances,
    receiver_for: type[Receiver], redis_client: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = topics(settings_for(topic_partitions=1, notify_min_interval_s=0.0))
    receiver = receiver_for([(404, {}), (500, {}), (503, {})])
    rejected, unavailable = make_alert(alert_id="r" * 32), make_alert(alert_id="u" * 32)
    publish(settings, [
        (None, b"{not json"),
        as_message(rejected),
        as_message(rejected),  # the duplicate of a rejected notice is not tried again
        as_message(unavailable),  # 500, 503: FAST gives up after two
        (None, b'{"alert_id": "x"}'),
    ])
    notifier = instances.start(settings, receiver.url)
    wait_for(lambda: notifier.stats.handled == 5)
    records = [DeadLetterRecord.model_validate_json(m.value)
               for m in read_all(settings.kafka_bootstrap or "", settings.topic_deadletter, 1, 4)]
    assert [(r.reason.value, r.source_offset) for r in records] == [
        ("bad_json", 0), ("webhook_rejected", 1), ("webhook_unavailable", 3),
        ("missing_field", 4)]
    assert "404" in records[1].detail and "503" in records[2].detail
    assert records[1].original_b64 and records[1].source_topic == settings.topic_alerts
    assert (len(receiver.attempts), receiver.received) == (3, [])
    prefix = f"{settings.consumer_group}:notify:"
    assert redis_client.get(prefix + "r" * 32 + ":firing:0") == b"rejected"
    assert redis_client.get(prefix + "u" * 32 + ":firing:0") is None  # a replay may retry
    stored = [k + (redis_client.get(k) or b"") for k in redis_client.keys("*")]
    for shown in ([r.model_dump_json() for r in records], caplog.text, repr(stored)):
        assert SECRET not in str(shown) and "/services/" not in str(shown)


def test_the_cli_reads_the_url_from_a_secret_file_and_stops_on_sigterm(
    settings_for: Callable[..., Settings], receiver_for: type[Receiver], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = topics(settings_for(topic_partitions=1))
    receiver = receiver_for([])
    secret = tmp_path / "webhook-url"
    secret.write_text(receiver.url + "\n")
    for name in ("kafka_bootstrap", "redis_url", "topic_alerts", "topic_deadletter",
                 "consumer_group"):
        monkeypatch.setenv(f"COSTFLUX_{name.upper()}", str(getattr(settings, name)))
    monkeypatch.setenv("COSTFLUX_SLACK_WEBHOOK_URL_FILE", str(secret))
    monkeypatch.setenv("COSTFLUX_TOPIC_PARTITIONS", "1")
    metrics_port = free_port()
    monkeypatch.setenv("COSTFLUX_NOTIFY_METRICS_PORT", str(metrics_port))
    # One alert, and one message that is not an alert (dead-lettered).
    publish(settings, [as_message(make_alert()), (None, b"not json")])
    scraped: list[str] = []

    def notify_metrics(text: str) -> dict[str, float]:
        return {name: float(value) for name, _, value in
                (line.partition(" ") for line in text.splitlines())
                if name.startswith("costflux_notify_")}

    def stop_when_counted() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                scraped.append(requests.get(f"http://127.0.0.1:{metrics_port}/metrics",
                                            timeout=2).text)
                if notify_metrics(scraped[-1]).get("costflux_notify_deadlettered_total"):
                    break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_counted, daemon=True).start()
    assert main(["notify"]) == 0
    assert len(receiver.received) == 1
    assert "1 delivered" in caplog.text and SECRET not in caplog.text
    # Alerts are handled in order: the dead letter counted means the post was too.
    assert notify_metrics(scraped[-1]) == {
        "costflux_notify_delivered_total": 1.0, "costflux_notify_duplicates_total": 0.0,
        "costflux_notify_deadlettered_total": 1.0, "costflux_notify_redis_retries_total": 0.0,
        "costflux_notify_assigned_partitions": 1.0}
    assert not any(SECRET in text or "/services/" in text for text in scraped)
    with pytest.raises(requests.ConnectionError):  # the server went with the command
        requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)

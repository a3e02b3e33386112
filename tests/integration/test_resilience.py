"""Faults of the parts around a worker: Redis down or slow, SIGTERM, a flush held up by Redis
then SIGKILL, the broker restarted, the notifier during a Redis outage. Each ends with totals
equal to an independent recomputation (or says what is lost).

Redis and broker faults use servers this module starts (never the session ones), restarted on
the same port; workers are real subprocesses.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.settings import Settings
from costflux.streams.cost_store import SourceState
from costflux.streams.kafka import consumer_config, ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.background import in_background
from tests.integration.stored import applied_messages, stored_sources, wait_applied
from tests.integration.test_faults import (
    BASE_MS,
    assert_exact,
    iso,
    served_totals,
    usage,
    window_of,
)
from tests.integration.worker_process import WorkerProcess, settings_env
from tests.notify.receiver import SECRET, Receiver, make_alert
from tests.notify.test_notifier import as_message, publish

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SIGTERM_DEADLINE_S = 15.0


def produce(settings: Settings, events: list[dict[str, Any]], per_message: int = 20) -> int:
    """Send ``events``; return how many messages carried them."""
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=per_message) as producer:
        for event in events:
            producer.send(event)
    return producer.messages_sent


def readiness(worker: WorkerProcess) -> tuple[int, str]:
    status, body = worker.get("/readyz")
    return status, body.get("detail", "") if isinstance(body, dict) else str(body)


class Watch:
    """Polls a worker's /readyz in a thread and keeps every not-ready reason it saw."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.reasons: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status, detail = readiness(self.worker)
            except OSError:
                continue
            if status != 200:
                self.reasons.append(detail)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(10)
        return self.reasons


def committed_and_stored(settings: Settings) -> list[tuple[int, SourceState]]:
    """Per usage partition: ingest's committed Kafka offset (a lag signal) and the state the
    store holds (where it resumes)."""
    consumer = Consumer(consumer_config(settings, f"{settings.consumer_group}-ingest"))
    try:
        partitions = [TopicPartition(settings.topic_usage, p)
                      for p in range(settings.topic_partitions)]
        committed = consumer.committed(partitions, timeout=10)
    finally:
        consumer.close()
    stored = stored_sources(settings)
    return [(tp.offset, stored.get(tp.partition, SourceState())) for tp in committed]


def test_redis_down_then_back_loses_nothing_and_counts_nothing_twice(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    own_redis: EmbeddedRedis,
) -> None:
    # Lateness of a day: the re-sent events below are judged by dedup, not dropped as late.
    settings = settings_for(redis_url=own_redis.url, topic_partitions=4, ingest_flush_s=0.05,
                            allowed_lateness_s=86_400)
    ensure_topics(settings, {settings.topic_usage: 4})
    worker = start_worker(settings)
    worker.wait_ready()
    before = [usage(i) for i in range(4_000)]
    during = [usage(i) for i in range(4_000, 8_000)]
    # Re-sent events (a producer retry) on both sides of the outage: each must count once,
    # so dedup must have kept its memory and ingest must not have skipped it.
    resent = [usage(i) for i in range(0, 8_000, 40)]
    messages = produce(settings, before)
    worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") >= len(before), 60,
                    "ingesting the first part")
    watch = Watch(worker)
    outage = in_background(lambda: own_redis.restart(down_s=8.0))
    messages += produce(settings, during + resent)  # arrives while Redis is down
    outage.join(60)
    assert own_redis.running
    reasons = watch.stop()
    assert worker.process.poll() is None, worker.log_tail()  # kept running throughout
    # Not ready while Redis was down, with the reason.
    assert any("usage ingest waiting for redis" in reason for reason in reasons), reasons
    assert worker.metric("costflux_dependency_retries_total", component="usage ingest",
                         dependency="redis") > 0
    expected = [iso(e) for e in before + during]
    assert_exact(served_totals(worker, len(expected)), expected)
    worker.wait_ready(60)  # ready again once Redis answers
    worker.wait_for(lambda: worker.metric("costflux_duplicates_total") >= len(resent), 60,
                    "judging the re-sent events")
    assert worker.metric("costflux_duplicates_total") == len(resent)
    assert worker.metric("costflux_ingest_events_total") == len(expected)
    wait_applied(worker, messages)  # nothing more can arrive: the totals are final
    assert_exact(worker.allocation(window_of([]), "model"), expected)


def test_redis_slow_for_seconds_only_delays_counting(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    own_redis: EmbeddedRedis,
) -> None:
    settings = settings_for(redis_url=own_redis.url, topic_partitions=2, ingest_flush_s=0.05)
    ensure_topics(settings, {settings.topic_usage: 2})
    worker = start_worker(settings)
    worker.wait_ready()
    events = [usage(i) for i in range(6_000)]
    client = redis.Redis.from_url(own_redis.url)
    try:
        messages = produce(settings, events[:2_000])
        worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") > 0, 60,
                        "ingesting")
        # Every command of every client waits 4 s: flushes, source states, the serving view.
        client.execute_command("CLIENT", "PAUSE", "4000", "ALL")
        messages += produce(settings, events[2_000:])
        paused_at = time.monotonic()
        assert worker.process.poll() is None
    finally:
        client.close()
    expected = [iso(e) for e in events]
    assert_exact(served_totals(worker, len(expected)), expected)
    assert time.monotonic() - paused_at < 60
    assert worker.metric("costflux_duplicates_total") == 0
    wait_applied(worker, messages)
    assert_exact(worker.allocation(window_of([]), "model"), expected)


def test_sigterm_mid_stream_flushes_commits_and_exits_within_the_deadline(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = settings_for(topic_partitions=4, ingest_flush_s=0.05)
    ensure_topics(settings, {settings.topic_usage: 4})
    events = [usage(i) for i in range(40_000)]
    worker = start_worker(settings)
    worker.wait_ready()
    producing = in_background(lambda: produce(settings, events, per_message=5))
    worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") > 2_000, 60,
                    "ingesting")
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(SIGTERM_DEADLINE_S + 10)
    took = time.monotonic() - signalled
    assert took < SIGTERM_DEADLINE_S, f"exit took {took:.1f}s\n{worker.log_tail()}"
    assert code == 0, worker.log_tail()
    # Applied and committed: Kafka's committed offset (the lag signal) is where the store
    # says the partition resumes.
    for committed, stored in committed_and_stored(settings):
        assert committed == stored.next_offset, (committed, stored)
    producing.join(120)
    restarted = start_worker(settings)
    restarted.wait_ready()
    expected = [iso(e) for e in events]
    assert_exact(served_totals(restarted, len(expected)), expected)
    wait_applied(restarted, len(events) // 5)
    assert_exact(restarted.allocation(window_of([]), "model"), expected)


def test_a_flush_held_up_by_redis_then_sigkill_leaves_no_offset_gap(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    own_redis: EmbeddedRedis,
) -> None:
    """A slow flush ahead of fast ones: while one flush waits on Redis, ingest keeps consuming
    and judging the next ones; a crash then must not leave a later offset committed or stored
    past the stuck one."""
    settings = settings_for(redis_url=own_redis.url, topic_partitions=4, ingest_flush_s=0.05)
    ensure_topics(settings, {settings.topic_usage: 4})
    events = [usage(i) for i in range(20_000)]
    worker = start_worker(settings)
    worker.wait_ready()
    client = redis.Redis.from_url(own_redis.url)
    try:
        produce(settings, events[:5_000])
        worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") > 0, 60,
                        "ingesting")
        client.execute_command("CLIENT", "PAUSE", "6000", "WRITE")  # reads go on
        produce(settings, events[5_000:])  # fast events behind the held-up flush
        # Consumed while the flush is held: more in hand than one flush of the first part.
        worker.wait_for(lambda: worker.metric("costflux_ingest_unapplied_messages",
                                              kind="usage") > 5_000 // 20, 30,
                        "consuming behind the held flush")
        # Still held: no stored state (a Redis write) has covered the events behind it.
        assert applied_messages(settings) < len(events) // 20
        worker.kill()
        client.execute_command("CLIENT", "UNPAUSE")
    finally:
        client.close()
    # Nothing was stored or committed beyond what was applied whole.
    for committed, stored in committed_and_stored(settings):
        if stored.next_offset is not None:
            assert committed <= stored.next_offset, (committed, stored)
    restarted = start_worker(settings)
    restarted.wait_ready()
    expected = [iso(e) for e in events]
    assert_exact(served_totals(restarted, len(expected)), expected)
    assert restarted.metric("costflux_duplicates_total") == 0
    wait_applied(restarted, len(events) // 20)
    assert_exact(restarted.allocation(window_of([]), "model"), expected)


def test_broker_restart_loses_its_log_and_counting_resumes_on_the_new_one(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """The embedded Tansu keeps everything in memory: a restart comes back with no topics,
    no committed offsets and no changelogs. What was served stays in the Redis view; new
    data is counted exactly, from the start of the new log (not from the old checkpoint)."""
    with EmbeddedBroker(free_port()) as broker:
        settings = settings_for(kafka_bootstrap=broker.bootstrap, topic_partitions=2)
        ensure_topics(settings, {settings.topic_usage: 2})
        worker = start_worker(settings)
        worker.wait_ready()
        before = [usage(i) for i in range(1_000)]
        produce(settings, before)
        assert_exact(served_totals(worker, len(before)), [iso(e) for e in before])
        broker.restart(down_s=2.0)
        # Memory storage: all gone. (A worker that carries on re-creates its own topics at
        # once, its changelogs and partials; nothing creates the usage topic but us.)
        assert settings.topic_usage not in AdminClient(
            {"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        # The worker does not carry on by itself against a restarted Tansu: seen here, either
        # librdkafka's main thread segfaults on the restarted broker's first metadata answers
        # (dmesg: "rdk:main segfault at 0"), or Faust's commits and ingest's publishes keep
        # failing on the vanished topics (ingest then fails /healthz). Either way its
        # orchestrator restarts it, as here.
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(15)
        if worker.process.poll() is None:
            worker.kill()
        worker = start_worker(settings)  # re-creates the topics it needs
        worker.wait_ready()
        # The next day's events, so they fill windows of their own beside the served ones.
        after = [usage(i, ts_ms=BASE_MS + 86_400_000 + i * 250) for i in range(1_000, 3_000)]
        ensure_topics(settings, {settings.topic_usage: 2})
        messages = produce(settings, after)
        expected = [iso(e) for e in before + after]
        assert_exact(served_totals(worker, len(expected)), expected)
        assert worker.metric("costflux_ingest_events_total") == len(after)
        wait_applied(worker, messages)
        assert_exact(worker.allocation(window_of([]), "model"), expected)
        worker.stop()  # while its broker runs: against none, Faust's shutdown waits it out


def test_notify_during_a_redis_outage_posts_every_notice_once(
    settings_for: Callable[..., Settings], own_redis: EmbeddedRedis, tmp_path: Path,
) -> None:
    settings = settings_for(redis_url=own_redis.url, topic_partitions=2,
                            notify_min_interval_s=0.1)
    ensure_topics(settings, {settings.topic_alerts: 2, settings.topic_deadletter: 2})
    receiver = Receiver([])
    env = settings_env(settings) | {"COSTFLUX_SLACK_WEBHOOK_URL": receiver.url,
                                    "COSTFLUX_NOTIFY_MIN_INTERVAL_S": "0.1"}
    log_path = tmp_path / "notify.log"
    with log_path.open("wb") as log_file:
        notify = subprocess.Popen([sys.executable, "-m", "costflux", "notify"], env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        alerts = [make_alert(team=f"team-{i:02d}x", alert_id=f"{i:032x}") for i in range(12)]
        publish(settings, [as_message(a) for a in alerts[:4]])
        wait_until(lambda: len(receiver.received) == 4, 90, "the first notices", log_path)
        outage = in_background(lambda: own_redis.restart(down_s=6.0))
        time.sleep(0.5)
        # While Redis is down: new notices, and every notice once more (the detector
        # re-sends identical events after a crash).
        publish(settings, [as_message(a) for a in alerts[4:] + alerts])
        outage.join(60)
        wait_until(lambda: len(receiver.received) >= len(alerts), 90, "every notice", log_path)
        time.sleep(3)  # a duplicate storm would arrive now
        assert notify.poll() is None, log_path.read_text()  # waited for Redis, did not die
        bodies = [body.decode() for _, body in receiver.received]
        posted = {f"team-{i:02d}x": sum(f"team-{i:02d}x" in body for body in bodies)
                  for i in range(len(alerts))}
        assert set(posted.values()) == {1}, posted  # each notice once: none lost, none twice
        assert len(bodies) == len(alerts)
        assert "Redis unavailable" in log_path.read_text()
        assert SECRET not in log_path.read_text()
    finally:
        notify.send_signal(signal.SIGTERM)
        notify.wait(30)
        receiver.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout_s}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)

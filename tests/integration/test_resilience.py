"""Faults of the parts around a worker: Redis down or slow, an agent that raises, SIGTERM,
a flush held up by Redis then SIGKILL, the broker restarted, the notifier during a Redis
outage. Each ends with totals equal to an independent recomputation (or says what is lost).

Redis and broker faults use servers this module starts (never the session ones), restarted on
the same port; workers are real subprocesses.
"""

from __future__ import annotations

import base64
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.settings import Settings
from streams.ingest import checkpoint_key
from streams.kafka import consumer_config, ensure_topics, producer_config
from streams.producer import UsageProducer
from tests.integration.test_faults import (
    BASE_MS,
    assert_exact,
    iso,
    read_deadletters,
    served_totals,
    usage,
    window_of,
)
from tests.integration.worker_process import WorkerProcess, settings_env
from tests.notify.receiver import SECRET, Receiver, make_alert
from tests.notify.test_notifier import as_message, publish

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SIGTERM_DEADLINE_S = 15.0


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis for this test alone, with an append-only file, so a restart keeps its data
    (as a production Redis with AOF does)."""
    with EmbeddedRedis(durable=True) as server:
        yield server


def produce(settings: Settings, events: list[dict[str, Any]], per_message: int = 20) -> None:
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=per_message) as producer:
        for event in events:
            producer.send(event)


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


def in_background(action: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def committed_and_checkpoints(settings: Settings) -> list[tuple[int, dict[str, str]]]:
    """Per usage partition: ingest's committed Kafka offset and its Redis checkpoint."""
    consumer = Consumer(consumer_config(settings, f"{settings.consumer_group}-ingest"))
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        partitions = [TopicPartition(settings.topic_usage, p)
                      for p in range(settings.topic_partitions)]
        committed = consumer.committed(partitions, timeout=10)
        return [
            (tp.offset, {k.decode(): v.decode() for k, v in client.hgetall(
                checkpoint_key(settings.consumer_group, settings.topic_usage, tp.partition)
            ).items()})
            for tp in committed
        ]
    finally:
        consumer.close()
        client.close()


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
    produce(settings, before)
    worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") >= len(before), 60,
                    "ingesting the first part")
    watch = Watch(worker)
    outage = in_background(lambda: own_redis.restart(down_s=8.0))
    produce(settings, during + resent)  # arrives while Redis is down
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
    time.sleep(1.5)  # nothing more arrives: the totals are final
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
        produce(settings, events[:2_000])
        worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") > 0, 60,
                        "ingesting")
        # Every command of every client waits 4 s: dedup, checkpoints, the serving view.
        client.execute_command("CLIENT", "PAUSE", "4000", "ALL")
        produce(settings, events[2_000:])
        paused_at = time.monotonic()
        assert worker.process.poll() is None
    finally:
        client.close()
    expected = [iso(e) for e in events]
    assert_exact(served_totals(worker, len(expected)), expected)
    assert time.monotonic() - paused_at < 60
    assert worker.metric("costflux_duplicates_total") == 0
    time.sleep(1.5)
    assert_exact(worker.allocation(window_of([]), "model"), expected)


def test_an_exception_in_the_combiner_is_reported_not_swallowed_and_counting_goes_on_unstalled(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    # A tight stall threshold: the progress check must not take a healthy catch-up, or the
    # poison partial's dead-lettering, for a stall.
    settings = settings_for(topic_partitions=2, combine_stall_s=5.0)
    ensure_topics(settings, {settings.topic_usage: 2})
    worker = start_worker(settings)
    worker.wait_ready()
    watch = Watch(worker)
    first = [usage(i) for i in range(500)]
    produce(settings, first)
    served_totals(worker, len(first))
    assert worker.metric("costflux_agent_errors_total") == 0
    # A real input the combiner cannot apply: a message on its partials topic that no
    # ingest wrote (a misconfigured producer sharing the topic).
    poison = b'{"src": "usage:0", "first": 0, "last": '
    producer = Producer(producer_config(settings))
    producer.produce(settings.topic_partials, value=poison, key=b"60:1700000000000:0")
    assert producer.flush(30) == 0
    worker.wait_for(
        lambda: worker.metric("costflux_agent_errors_total", agent="costflux.combine") == 1,
        60, "counting the combiner's error")
    status, detail = readiness(worker)
    assert status == 503 and "costflux.combine raised JSONDecodeError" in detail, detail
    assert worker.get("/healthz")[0] == 200  # alive: nothing to restart
    (record,) = read_deadletters(settings, 1)
    assert record["reason"] == "bad_json"
    assert record["source_topic"] == settings.topic_partials
    assert base64.b64decode(record["original_b64"]) == poison
    # No stall: what comes after is counted, exactly.
    second = [usage(i) for i in range(500, 1_500)]
    produce(settings, second)
    expected = [iso(e) for e in first + second]
    assert_exact(served_totals(worker, len(expected)), expected)
    # Caught up: the progress check (every 2 s) sees nothing behind, after a threshold's wait.
    worker.wait_for(lambda: readiness(worker)[0] == 200, 60, "ready again")
    time.sleep(5.0 + 2 * 2.0)
    assert readiness(worker)[0] == 200
    exported = worker.get("/metrics")[1]
    assert "\ncostflux_combine_behind_partials " in exported  # present, not absent-as-0
    assert worker.metric("costflux_combine_behind_partials") == 0
    assert worker.metric("costflux_combine_still_seconds") == 0
    assert not [why for why in watch.stop() if "stalled" in why]


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
    # Flushed and committed: no intent left pending, and Kafka's committed offset is the
    # checkpoint (what a restart resumes from).
    for committed, checkpoint in committed_and_checkpoints(settings):
        assert checkpoint.get("pending_last", "-1") == "-1", checkpoint
        assert committed == int(checkpoint["next"]), (committed, checkpoint)
    producing.join(120)
    restarted = start_worker(settings)
    restarted.wait_ready()
    expected = [iso(e) for e in events]
    assert_exact(served_totals(restarted, len(expected)), expected)
    time.sleep(1.5)
    assert_exact(restarted.allocation(window_of([]), "model"), expected)


def test_a_crash_in_a_partitions_first_flush_resumes_at_its_intent(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    """A partition's first flush records its intent before any checkpoint exists, so a crash
    there leaves an intent and no "next" (written here as the crash leaves it; the worker
    used to fail on it at start-up, for good). The restart re-cuts at the intent, counts every
    event once and checkpoints past them."""
    settings = settings_for(topic_partitions=1, ingest_flush_s=0.05)
    ensure_topics(settings, {settings.topic_usage: 1})
    events = [usage(i) for i in range(300)]
    produce(settings, events, per_message=1)
    key = checkpoint_key(settings.consumer_group, settings.topic_usage, 0)
    redis_client.hset(key, mapping={"pending_last": 149})
    worker = start_worker(settings)
    worker.wait_ready()
    expected = [iso(e) for e in events]
    assert_exact(served_totals(worker, len(expected)), expected)
    worker.wait_for(lambda: redis_client.hget(key, "next") == b"300", 30, "checkpointing")
    assert redis_client.hget(key, "pending_last") == b"-1"


def test_a_flush_held_up_by_redis_then_sigkill_leaves_no_offset_gap(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    own_redis: EmbeddedRedis,
) -> None:
    """A slow flush ahead of fast ones: while one flush waits on Redis (its dedup or intent),
    ingest keeps consuming and judging the next ones; a crash then must not leave a later
    offset committed or checkpointed past the stuck one."""
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
        time.sleep(2.0)
        # Still held: no checkpoint (a Redis write) has covered the events behind it.
        assert checkpointed_messages(client, settings) < len(events) // 20
        worker.kill()
        client.execute_command("CLIENT", "UNPAUSE")
    finally:
        client.close()
    # Nothing was checkpointed or committed beyond what was published whole.
    for committed, checkpoint in committed_and_checkpoints(settings):
        if checkpoint:
            assert committed <= int(checkpoint["next"]), (committed, checkpoint)
    restarted = start_worker(settings)
    restarted.wait_ready()
    expected = [iso(e) for e in events]
    # Before agents.confirmed_table, 2 runs in ~15 served 19,737 of 20,000 here: Faust had
    # committed a partial whose changelog record died with the worker.
    assert_exact(served_totals(restarted, len(expected)), expected)
    assert restarted.metric("costflux_duplicates_total") == 0
    time.sleep(1.5)
    assert_exact(restarted.allocation(window_of([]), "model"), expected)


def checkpointed_messages(client: redis.Redis, settings: Settings) -> int:
    """Messages of the usage topic that ingest's checkpoints say are done (a Redis read)."""
    return sum(
        int(client.hget(checkpoint_key(settings.consumer_group, settings.topic_usage, p),
                        "next") or 0)
        for p in range(settings.topic_partitions)
    )


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
        produce(settings, after)
        expected = [iso(e) for e in before + after]
        assert_exact(served_totals(worker, len(expected)), expected)
        assert worker.metric("costflux_ingest_events_total") == len(after)
        time.sleep(1.5)
        assert_exact(worker.allocation(window_of([]), "model"), expected)


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

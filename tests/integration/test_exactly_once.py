"""Exactly once by construction: each flush is applied to the store in one atomic step with
its partition's offsets, or not at all.

A crash at every point of a flush (failpoints place SIGKILL exactly), two workers applying
the same partition at once (the old owner frozen across a rebalance), Redis restarted from
an append-only file that lost its last writes, and Redis emptied mid-stream: every time the
totals equal a Decimal recomputation of the events, deduplicated by ``event_id``, and every
bad input is in the dead-letter topic.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from costflux.embedded import EmbeddedRedis, free_port
from costflux.settings import Settings
from costflux.streams.kafka import consumer_config, ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.background import in_background
from tests.integration.expected import totals_by
from tests.integration.stored import applied_messages, wait_applied
from tests.integration.test_faults import (
    BAD_INPUTS,
    assert_exact,
    iso,
    served_totals,
    usage,
    window_of,
)
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]


class Stream:
    """Events with re-sent copies and bad inputs among them, spread over every partition,
    sent in small paced bursts so a worker applies them in many flushes; what counts is
    recomputed from the events themselves."""

    def __init__(self, count: int, seed: int, first_index: int = 0) -> None:
        rng = random.Random(seed)
        self.events = [usage(i) for i in range(first_index, first_index + count)]
        # A producer's retries: copies of earlier events, which must count once.
        self.copies = {index: self.events[rng.randrange(index)]
                       for index in rng.sample(range(1, count), count // 50)} if count else {}
        self.bad = [raw for _, raw in BAD_INPUTS]
        self.messages = 0

    def produce(self, settings: Settings) -> int:
        """Send it all, 10 events to a message, each copy and bad input alone, a burst of
        100 events every ~10 ms; return the number of messages."""
        with UsageProducer(producer_config(settings), settings.topic_usage,
                           events_per_message=10) as producer:
            for index, event in enumerate(self.events):
                producer.send(event)
                if index in self.copies:
                    producer.send(self.copies[index])
                if index % 400 == 0:
                    producer.send_raw(self.bad[index // 400 % len(self.bad)])
                if index % 100 == 99:
                    producer.flush()
                    time.sleep(0.01)
            producer.flush()
            sent = producer.messages_sent
        self.messages += sent
        return sent

    @property
    def bad_sent(self) -> int:
        return len(range(0, len(self.events), 400))

    def expected(self) -> list[dict[str, Any]]:
        return [iso(e) for e in self.events]

    def __add__(self, later: Stream) -> Stream:
        both = Stream(0, seed=0)
        both.events = self.events + later.events
        both.copies = {**self.copies, **later.copies}
        both.messages = self.messages + later.messages
        return both


def deadletter_positions(settings: Settings, wanted: int, timeout_s: float = 60) -> dict[
        tuple[int, int], list[dict[str, Any]]]:
    """The dead-letter topic read from its start until ``wanted`` distinct source positions
    are in it: position -> every copy found (a replayed flush publishes its dead letters
    again, under the same key)."""
    consumer = Consumer(consumer_config(settings, f"{settings.consumer_group}-dlq-positions"))
    consumer.assign([TopicPartition(settings.topic_deadletter, p, OFFSET_BEGINNING)
                     for p in range(settings.topic_partitions)])
    found: dict[tuple[int, int], list[dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < wanted and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is not None:
                    continue
                record = json.loads(message.value())
                position = (record["source_partition"], record["source_offset"])
                key = (f"{settings.topic_usage}:{position[0]}:{position[1]}").encode()
                assert message.key() == key, (message.key(), key)
                found.setdefault(position, []).append(record)
    finally:
        consumer.close()
    return found


def assert_every_bad_input_deadlettered(settings: Settings, stream: Stream) -> None:
    found = deadletter_positions(settings, stream.bad_sent)
    assert len(found) == stream.bad_sent, f"{len(found)} of {stream.bad_sent} dead letters"
    originals = {base64.b64decode(copies[0]["original_b64"]) for copies in found.values()}
    assert originals <= set(stream.bad)
    for copies in found.values():  # copies of one dead letter are the same record
        assert all(copy == copies[0] for copy in copies)


def assert_all_counted_once(worker: WorkerProcess, stream: Stream) -> None:
    """Served totals, by model and by team, equal the recomputation once every message is
    applied (after which nothing more can be added to any window)."""
    expected = stream.expected()
    assert_exact(served_totals(worker, len(expected)), expected)
    wait_applied(worker, stream.messages)
    assert_exact(worker.allocation(window_of([]), "model"), expected)
    by_team = totals_by(expected, "team")
    served = worker.allocation(window_of([]), "label:team")
    assert {team: (Decimal(row["totalCostExact"]), row["requests"])
            for team, row in served.items()} == {
        team: (want["cost"], want["requests"]) for team, want in by_team.items()}


# --- a crash at each point of a flush ------------------------------------------------------

#: Where a flush can be cut short, in the order a flush passes them, each at a hit that
#: falls in the middle of the backlog (several flushes applied, several to come).
CRASH_POINTS = [
    ("ingest.mid_deadletters", 3),  # dead letters partly published, nothing applied
    ("ingest.before_apply", 4),  # dead letters published, the atomic step not run
    ("ingest.after_apply", 6),  # applied, not yet known to the ingest thread
    ("ingest.before_commit", 2),  # applied and known, Kafka not told
    ("ingest.after_commit", 2),  # applied and committed (asynchronously)
]


@pytest.mark.parametrize(("point", "hit"), CRASH_POINTS, ids=[p for p, _ in CRASH_POINTS])
def test_sigkill_at_each_point_of_a_flush_then_restart_counts_every_event_once(
    settings_for: Callable[..., Settings], start_worker: Callable[..., WorkerProcess],
    point: str, hit: int,
) -> None:
    settings = settings_for(topic_partitions=4, ingest_flush_s=0.05, allowed_lateness_s=86_400)
    ensure_topics(settings, {settings.topic_usage: 4})
    stream = Stream(8_000, seed=sum(map(ord, point)))
    crashing = start_worker(settings, env={"COSTFLUX_FAILPOINTS": f"{point}=kill@{hit}"})
    crashing.wait_ready()
    stream.produce(settings)
    assert crashing.process.wait(60) == -signal.SIGKILL, crashing.log_tail()
    assert f"failpoint {point}: hit {hit}," in crashing.log_path.read_text()
    assert applied_messages(settings) < stream.messages  # it died with work left

    restarted = start_worker(settings)
    restarted.wait_ready()
    assert_all_counted_once(restarted, stream)
    assert_every_bad_input_deadlettered(settings, stream)
    assert restarted.metric("costflux_deadletter_total", reason="late") == 0


# --- two owners of one partition at once -------------------------------------------------

def frozen(worker: WorkerProcess) -> bool:
    """Whether the worker process is stopped (SIGSTOP): state T in /proc."""
    stat = Path(f"/proc/{worker.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def test_an_old_owner_frozen_across_a_rebalance_then_resumed_counts_nothing_twice(
    settings_for: Callable[..., Settings], start_worker: Callable[..., WorkerProcess],
) -> None:
    """The old owner freezes holding a judged flush (SIGSTOP at the atomic step); its session
    expires and a second worker takes every partition and applies everything. Resumed
    (SIGCONT), the old owner applies its stale flush: the store refuses it, the old owner
    resumes from what the store holds, and both go on sharing the partitions."""
    settings = settings_for(topic_partitions=4, ingest_flush_s=0.05, allowed_lateness_s=86_400)
    ensure_topics(settings, {settings.topic_usage: 4})
    first_part, second_part = Stream(6_000, seed=7), Stream(4_000, seed=8, first_index=6_000)
    old = start_worker(settings, env={"COSTFLUX_FAILPOINTS": "ingest.before_apply=stop@3"})
    old.wait_ready()
    producing = in_background(lambda: first_part.produce(settings))
    old.wait_for(lambda: frozen(old), 120, "frozen with a flush in hand")
    stale_position = applied_messages(settings)

    new = start_worker(settings.model_copy(update={"http_port": free_port()}))
    new.wait_ready()
    producing.join(120)
    wait_applied(new, first_part.messages)  # the new owner applied everything, alone
    assert applied_messages(settings) > stale_position

    os.kill(old.process.pid, signal.SIGCONT)
    old.wait_for(lambda: old.metric("costflux_ingest_resyncs_total", kind="usage") >= 1, 60,
                 "refusing its stale flush and resuming from the store")
    assert "resuming from the store" in old.log_path.read_text()
    old.wait_ready()
    # Both owners go on: what arrives now is split between them, and counted once.
    second_part.produce(settings)
    assert_all_counted_once(new, first_part + second_part)
    assert_all_counted_once(old, first_part + second_part)


# --- Redis loses its last writes, or everything ------------------------------------------

def test_redis_restarted_from_an_aof_that_lost_its_last_writes_leaves_totals_exact(
    settings_for: Callable[..., Settings], start_worker: Callable[..., WorkerProcess],
    own_redis: EmbeddedRedis,
) -> None:
    """SIGKILL of Redis mid-stream, and its append-only file cut back by a fifth, as a host
    crash loses the writes of its last second: the store comes back at an earlier state of
    every partition (whole flushes: Redis logs a script's writes as one MULTI/EXEC and drops
    an incomplete one on load). The worker finds the store behind what it expects, resumes
    from it, and counts every event once."""
    settings = settings_for(redis_url=own_redis.url, topic_partitions=4, ingest_flush_s=0.05,
                            allowed_lateness_s=86_400)
    ensure_topics(settings, {settings.topic_usage: 4})
    stream = Stream(12_000, seed=11)
    worker = start_worker(settings)
    worker.wait_ready()
    producing = in_background(lambda: stream.produce(settings))
    worker.wait_for(lambda: applied_messages(settings) > 150, 60, "applying the stream")

    aof = own_redis.log_path.parent / "appendonly.aof"

    def lose_the_last_writes() -> None:
        size = aof.stat().st_size
        with aof.open("r+b") as handle:
            handle.truncate(size - size // 5)

    own_redis.restart(down_s=0.5, crash=True, before_start=lose_the_last_writes)
    producing.join(120)
    worker.wait_for(lambda: worker.metric("costflux_ingest_resyncs_total", kind="usage") >= 1,
                    60, "finding the store behind and resuming from it")
    assert_all_counted_once(worker, stream)
    assert_every_bad_input_deadlettered(settings, stream)


def test_redis_emptied_mid_stream_is_rebuilt_from_the_topic_exactly(
    settings_for: Callable[..., Settings], start_worker: Callable[..., WorkerProcess],
    own_redis: EmbeddedRedis,
) -> None:
    """FLUSHALL mid-stream (a Redis lost with its disk): every partition's stored state is
    gone, so ingest reads each partition again from the start of the topic and the store is
    rebuilt, dedup included."""
    settings = settings_for(redis_url=own_redis.url, topic_partitions=4, ingest_flush_s=0.05,
                            allowed_lateness_s=86_400)
    ensure_topics(settings, {settings.topic_usage: 4})
    first_part, second_part = Stream(6_000, seed=21), Stream(6_000, seed=22, first_index=6_000)
    worker = start_worker(settings)
    worker.wait_ready()
    first_part.produce(settings)
    wait_applied(worker, first_part.messages)
    producing = in_background(lambda: second_part.produce(settings))
    client = redis.Redis.from_url(own_redis.url)
    try:
        worker.wait_for(lambda: applied_messages(settings) > first_part.messages, 60,
                        "applying the second part")
        client.flushall()
    finally:
        client.close()
    producing.join(120)
    worker.wait_for(lambda: worker.metric("costflux_ingest_resyncs_total", kind="usage") >= 4,
                    60, "finding every partition's state gone")
    assert_all_counted_once(worker, first_part + second_part)

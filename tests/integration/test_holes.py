"""Partials Faust fetched but never delivered: read back from the real broker, in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from agents.health import Health
from agents.holes import HoleFiller, PartialRecord
from costflux.settings import Settings
from streams.kafka import consumer_config, ensure_topics, producer_config, read_offsets

pytestmark = pytest.mark.integration


def _produce(settings: Settings, topic: str, offsets: range) -> None:
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    for offset in offsets:
        producer.produce(topic, key=b"k%d" % offset, value=b"v%d" % offset, partition=1)
    assert producer.flush(10) == 0


def _filler(settings: Settings, unique: Callable[[str], str], group: str,
            timeout_s: float = 30.0) -> tuple[HoleFiller, CollectorRegistry]:
    """A filler for the agent whose consumer group is ``group``."""
    registry = CollectorRegistry()
    reread = Counter("reread", "partials read back", registry=registry)
    read = partial(read_offsets, consumer_config(settings, unique("reread")),
                   timeout_s=timeout_s)

    def resume(topic: str, partition: int) -> int:
        """The group's committed offset, as the worker's Faust consumer takes it."""
        consumer = Consumer(consumer_config(settings, group))
        try:
            (tp,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
            return max(tp.offset, 0)  # none committed yet: the log's start, 0 here
        finally:
            consumer.close()

    return HoleFiller(read, resume, Health(registry), reread, retry_s=0.2), registry


def _commit(settings: Settings, group: str, topic: str, offset: int) -> None:
    consumer = Consumer(consumer_config(settings, group))
    try:
        consumer.commit(offsets=[TopicPartition(topic, 1, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_skipped_offsets_are_read_back_and_combined_before_the_next_one(
    settings_for: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = settings_for()
    topic = unique("partials")
    ensure_topics(settings, {topic: 2})
    _produce(settings, topic, range(10))
    group = unique("agent")
    filler, registry = _filler(settings, unique, group)
    combined: list[tuple[str, int, bytes, bytes]] = []

    async def combine(record: PartialRecord) -> None:
        assert (record.topic, record.partition) == (topic, 1)
        combined.append(("read back", record.offset, record.key, record.value))

    async def deliver(generation: int, offsets: list[int]) -> None:
        for offset in offsets:
            await filler.before(topic, 1, generation, offset, combine)
            combined.append(("delivered", offset, b"k%d" % offset, b"v%d" % offset))

    asyncio.run(deliver(1, [0, 1, 2, 5, 6, 9]))  # the group has no committed offset: 0
    assert [(how, o) for how, o, _, _ in combined] == [
        ("delivered", 0), ("delivered", 1), ("delivered", 2), ("read back", 3),
        ("read back", 4), ("delivered", 5), ("delivered", 6), ("read back", 7),
        ("read back", 8), ("delivered", 9)]
    assert all((k, v) == (b"k%d" % o, b"v%d" % o) for _, o, k, v in combined)
    assert registry.get_sample_value("reread_total") == 4

    # A new generation starts at the group's committed offset: delivered from there, no hole.
    _commit(settings, group, topic, 4)
    combined.clear()
    asyncio.run(deliver(2, [4, 5]))
    assert [how for how, *_ in combined] == ["delivered", "delivered"]

    # Its first messages lost: read back too (the consumer began at 4, Faust delivered 7 first).
    combined.clear()
    asyncio.run(deliver(3, [7, 8]))
    assert [(how, o) for how, o, _, _ in combined] == [
        ("read back", 4), ("read back", 5), ("read back", 6), ("delivered", 7),
        ("delivered", 8)]
    assert registry.get_sample_value("reread_total") == 7


def test_a_hole_the_broker_cannot_serve_yet_is_waited_for_not_skipped(
    settings_for: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """Reading back fails (the offsets are not there yet): /readyz and the error counter
    say so, and the read is retried until it succeeds; nothing is combined out of order."""
    settings = settings_for()
    topic = unique("partials")
    ensure_topics(settings, {topic: 2})
    _produce(settings, topic, range(3))
    group = unique("agent")
    _commit(settings, group, topic, 2)
    filler, registry = _filler(settings, unique, group, timeout_s=0.3)
    combined: list[int] = []

    async def combine(record: PartialRecord) -> None:
        combined.append(record.offset)

    async def deliver() -> None:
        await filler.before(topic, 1, 1, 2, combine)
        await filler.before(topic, 1, 1, 6, combine)  # 3..5 do not exist yet

    later = threading.Timer(1.5, _produce, (settings, topic, range(3, 6)))
    later.start()
    asyncio.run(deliver())
    later.join()
    assert combined == [3, 4, 5]
    errors = registry.get_sample_value("costflux_agent_errors_total",
                                       {"agent": "costflux.combine"})
    assert errors is not None and errors >= 2

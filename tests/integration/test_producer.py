"""UsageProducer and run_replay against the embedded broker: what is sent arrives exactly once."""

from __future__ import annotations

import argparse
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic but its stubs declare it only here.
from confluent_kafka.cimpl import NewTopic

from costflux.cli.replay import add_replay_arguments, run_replay
from costflux.core.trace import Assignment, ColumnMapping
from costflux.streams.producer import ProducerError, UsageProducer
from costflux.streams.trace import iter_usage_events
from tests.paths import AZURE_TRACE

pytestmark = pytest.mark.integration

AZURE_CSV = AZURE_TRACE


@dataclass(frozen=True)
class Received:
    """One message read back from the topic."""

    partition: int
    key: bytes | None
    value: bytes


def producer_settings(bootstrap: str, **overrides: str) -> dict[str, str]:
    """A plain librdkafka producer config as costflux.streams.kafka would build it."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": "true",
        "acks": "all",
        "partitioner": "murmur2_random",
        **overrides,
    }


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
        future.result(timeout=15)


def read_all(bootstrap: str, topic: str, partitions: int, messages: int) -> list[Received]:
    """Read the topic from the start until ``messages`` arrived, then a little longer.

    The extra quiet second is what lets a test see a duplicate; high watermarks would be
    exact, but Tansu's ListOffsets answers do not track the log end.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": "false",
            "fetch.queue.backoff.ms": "10",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        received: list[Received] = []
        deadline = time.monotonic() + 30
        quiet_until: float | None = None
        while time.monotonic() < (quiet_until or deadline):
            message = consumer.poll(0.1)
            if message is None:
                continue
            assert message.error() is None, message.error()
            partition, value = message.partition(), message.value()
            assert partition is not None and isinstance(value, bytes)
            received.append(Received(partition, message.key(), value))
            if len(received) == messages:
                quiet_until = time.monotonic() + 1.0
        assert len(received) >= messages, f"{topic}: {len(received)} of {messages} arrived"
        return received
    finally:
        consumer.close()


def usage_events(count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}-{i}",
            "ts": f"2024-05-01T12:00:{i % 60:02d}.000000Z",
            "model": "gpt-4",
            "input_tokens": 100 + i,
            "output_tokens": 20,
            "labels": {"team": "search"},
        }
        for i in range(count)
    ]


def test_single_events_are_one_message_each_keyed_by_event_id(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("usage")
    create_topic(kafka_bootstrap, topic, partitions=3)
    events = usage_events(40, topic)

    with UsageProducer(producer_settings(kafka_bootstrap), topic, events_per_message=1) as producer:
        for event in events:
            producer.send(event)
        producer.flush()
        assert (producer.events_sent, producer.messages_sent) == (40, 40)

    received = read_all(kafka_bootstrap, topic, 3, 40)
    decoded = [orjson.loads(message.value) for message in received]
    assert all(isinstance(event, dict) for event in decoded)
    assert [message.key for message in received] == [e["event_id"].encode() for e in decoded]
    assert sorted(decoded, key=lambda e: e["event_id"]) == sorted(
        events, key=lambda e: e["event_id"]
    )
    # Keys spread over the partitions, so the same-partition check below means something.
    assert len({message.partition for message in received}) > 1


def test_a_resent_event_lands_in_the_same_partition(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("usage")
    create_topic(kafka_bootstrap, topic, partitions=3)
    events = usage_events(12, topic)

    with UsageProducer(producer_settings(kafka_bootstrap), topic, events_per_message=1) as producer:
        for event in events + events:
            producer.send(event)

    received = read_all(kafka_bootstrap, topic, 3, 24)
    assert Counter(message.key for message in received) == {
        event["event_id"].encode(): 2 for event in events
    }
    partitions_by_key: dict[bytes | None, set[int]] = {}
    for message in received:
        partitions_by_key.setdefault(message.key, set()).add(message.partition)
    assert all(len(partitions) == 1 for partitions in partitions_by_key.values())


def test_batched_events_arrive_exactly_once_as_json_arrays(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("usage")
    create_topic(kafka_bootstrap, topic, partitions=3)
    events = usage_events(250, topic)

    with UsageProducer(
        producer_settings(kafka_bootstrap), topic, events_per_message=100
    ) as producer:
        for event in events:
            producer.send(event)
        # The context manager's exit sends the last, partial batch of 50.

    received = read_all(kafka_bootstrap, topic, 3, 3)
    batches = [orjson.loads(message.value) for message in received]
    assert all(isinstance(batch, list) for batch in batches)
    assert sorted(len(batch) for batch in batches) == [50, 100, 100]
    for message, batch in zip(received, batches, strict=True):
        assert message.key == batch[0]["event_id"].encode()
    arrived = Counter(event["event_id"] for batch in batches for event in batch)
    assert arrived == Counter(event["event_id"] for event in events)
    by_id = {event["event_id"]: event for batch in batches for event in batch}
    assert all(by_id[event["event_id"]] == event for event in events)


def test_send_raw_passes_bytes_through_after_the_buffered_batch(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("usage")
    create_topic(kafka_bootstrap, topic, partitions=1)
    events = usage_events(3, topic)

    with UsageProducer(producer_settings(kafka_bootstrap), topic) as producer:
        for event in events:
            producer.send(event)
        producer.send_raw(b'{"event_id": "broken", ', key=b"raw")
        producer.send_raw(b"\xff not json")

    received = read_all(kafka_bootstrap, topic, 1, 3)
    assert [message.value for message in received[1:]] == [
        b'{"event_id": "broken", ',
        b"\xff not json",
    ]
    assert [message.key for message in received] == [events[0]["event_id"].encode(), b"raw", None]
    assert orjson.loads(received[0].value) == events


def test_message_over_the_size_limit_raises_producer_error(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("usage")
    big = usage_events(1, topic)[0] | {"labels": {"note": "x" * 5000}}
    # librdkafka's smallest allowed message.max.bytes is 1000.
    config = producer_settings(kafka_bootstrap, **{"message.max.bytes": "1000"})

    with UsageProducer(config, topic, events_per_message=1) as producer:
        with pytest.raises(ProducerError, match="too large"):
            producer.send(big)
        # The producer is still usable for events that fit.
        producer.send(usage_events(1, topic)[0])


def test_failed_delivery_raises_producer_error_on_flush(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    # Kafka rejects this topic name, so every message to it fails in the delivery report.
    producer = UsageProducer(producer_settings(kafka_bootstrap), f"{unique('bad')} topic!")
    for event in usage_events(5, "bad"):
        producer.send(event)

    with pytest.raises(ProducerError, match="failed delivery"):
        producer.flush(timeout=15)
    producer.close()


def test_unreachable_broker_raises_producer_error_on_close() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now: messages time out instead of being delivered.
    config = producer_settings(
        f"127.0.0.1:{port}", **{"message.timeout.ms": "500", "log_level": "0"}
    )

    with pytest.raises(ProducerError), UsageProducer(config, "llm.usage.v1") as producer:
        producer.send(usage_events(1, "gone")[0])

    with pytest.raises(ProducerError, match="closed"):
        producer.send(usage_events(1, "gone")[0])


def test_run_replay_sends_the_trace_exactly_once(
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = unique("usage")
    create_topic(kafka_bootstrap, topic, partitions=4)
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    args = parser.parse_args(
        [
            str(AZURE_CSV),
            "--models", "llama-2-70b,gpt-4",
            "--label", "team=search,ads,chat",
            "--limit", "250",
            "--events-per-message", "40",
            "--no-progress",
        ]
    )  # fmt: skip

    code = run_replay(args, producer_settings(kafka_bootstrap), topic)

    assert code == 0, capsys.readouterr().err
    assert "replayed 250 events" in capsys.readouterr().out
    expected = list(
        iter_usage_events(
            AZURE_CSV,
            ColumnMapping(),
            Assignment(models=("llama-2-70b", "gpt-4"), labels={"team": ("search", "ads", "chat")}),
            limit=250,
        )
    )
    batches = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, topic, 4, 7)]
    assert sorted(len(batch) for batch in batches) == [10] + [40] * 6
    arrived = sorted((e for batch in batches for e in batch), key=lambda e: e["event_id"])
    assert arrived == sorted(expected, key=lambda e: e["event_id"])


def test_run_replay_stops_at_a_bad_row_after_sending_the_rows_before_it(
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    topic = unique("usage")
    create_topic(kafka_bootstrap, topic, partitions=1)
    trace = tmp_path / "half.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-01 12:00:00,1,1\n"
        "2024-05-01 12:00:01,2,2\n"
        "2024-05-01 12:00:02,3,oops\n"
    )
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    args = parser.parse_args([str(trace), "--model", "gpt-4", "--no-progress"])

    code = run_replay(args, producer_settings(kafka_bootstrap), topic)

    assert code == 2
    err = capsys.readouterr().err
    assert "line 4" in err and "GeneratedTokens" in err and "2 events" in err
    (batch,) = [orjson.loads(m.value) for m in read_all(kafka_bootstrap, topic, 1, 1)]
    assert [event["event_id"] for event in batch] == ["half-0", "half-1"]


def test_run_replay_exits_1_when_kafka_does_not_take_the_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-01 12:00:00,1,1\n")
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    args = parser.parse_args([str(trace), "--model", "gpt-4", "--no-progress"])
    config = producer_settings(
        f"127.0.0.1:{port}", **{"message.timeout.ms": "500", "log_level": "0"}
    )

    code = run_replay(args, config, "llm.usage.v1")

    assert code == 1
    assert "failed" in capsys.readouterr().err


def test_close_with_the_broker_away_returns_within_its_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # librdkafka's default message timeout (5 minutes): only close()'s own timeout bounds it.
    producer = UsageProducer(producer_settings(f"127.0.0.1:{port}", log_level="0"),
                             "llm.usage.v1")
    producer.send(usage_events(1, "gone")[0])
    started = time.monotonic()
    with pytest.raises(ProducerError, match="still undelivered after 1 s"):
        producer.close(timeout=1.0)
    assert time.monotonic() - started < 10

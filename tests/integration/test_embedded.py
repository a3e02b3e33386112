"""The embedded broker and Redis, and the Kafka client configuration against a real broker."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from costflux.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedServerError,
    embedded_stack,
    free_port,
)
from costflux.settings import ConfigError, Settings
from costflux.streams.kafka import (
    KafkaSetupError,
    admin_config,
    consumer_config,
    ensure_topics,
    producer_config,
)

pytestmark = pytest.mark.integration


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _process_gone(pid: int) -> bool:
    # stop() reaps the child, so a stopped server leaves not even a zombie behind.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _consume(consumer: Consumer, count: int, deadline_s: float = 20.0) -> list[Any]:
    messages: list[Any] = []
    deadline = time.monotonic() + deadline_s
    while len(messages) < count and time.monotonic() < deadline:
        for message in consumer.consume(count - len(messages), timeout=0.5):
            assert message.error() is None, message.error()
            messages.append(message)
    return messages


def test_session_servers_listen_on_loopback(
    kafka_bootstrap: str, redis_client: redis.Redis
) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert redis_client.ping()
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"


def test_produce_consume_round_trip(
    settings_for: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = settings_for()
    topic = unique("roundtrip")
    assert ensure_topics(settings, {topic: 3}) == [topic]
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(30)}

    producer = Producer(producer_config(settings))
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0

    consumer = Consumer(consumer_config(settings, unique("group")))
    try:
        consumer.subscribe([topic])
        messages = _consume(consumer, len(sent))
    finally:
        consumer.close()

    assert {m.key(): m.value() for m in messages} == sent
    # murmur2_random must place each key where aiokafka (and so Faust) would.
    java_compatible = DefaultPartitioner()
    for message in messages:
        assert message.partition() == java_compatible(message.key(), [0, 1, 2], [0, 1, 2])


@pytest.mark.parametrize("auto_commit", [False, True], ids=["default", "auto-commit-on"])
def test_consumer_commits_only_when_told(
    settings_for: Callable[..., Settings], unique: Callable[[str], str], auto_commit: bool
) -> None:
    settings = settings_for()
    topic, group = unique("nocommit"), unique("group")
    ensure_topics(settings, {topic: 1})
    producer = Producer(producer_config(settings))
    producer.produce(topic, value=b"once")
    assert producer.flush(10) == 0
    overrides = {"enable.auto.commit": True} if auto_commit else {}

    seen = []
    for _ in range(2):
        # assign() keeps the group's committed offsets but skips the ~3 s group join.
        consumer = Consumer(consumer_config(settings, group, **overrides))
        try:
            consumer.assign([TopicPartition(topic, 0)])
            seen.append([m.value() for m in _consume(consumer, 1, deadline_s=2.0)])
        finally:
            consumer.close()

    # Without a commit the same record comes back to the next consumer of the group.
    assert seen == ([[b"once"], []] if auto_commit else [[b"once"], [b"once"]])


def test_ensure_topics_creates_asked_partitions_once(
    settings_for: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = settings_for()
    topics = {unique("one"): 1, unique("five"): 5}

    assert sorted(ensure_topics(settings, topics)) == sorted(topics)
    assert ensure_topics(settings, topics) == []

    metadata = AdminClient(admin_config(settings)).list_topics(timeout=5)
    assert {name: len(metadata.topics[name].partitions) for name in topics} == topics


@pytest.mark.parametrize(
    ("name", "partitions"), [("bad name!", 1), ("x" * 250, 1), ("zero-partitions", 0)]
)
def test_ensure_topics_rejects_what_kafka_would(name: str, partitions: int) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with pytest.raises(KafkaSetupError, match=r"topic '(bad name!|x+|zero-partitions)'"):
        ensure_topics(settings, {name: partitions})


def test_ensure_topics_unreachable_broker_names_topics() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with pytest.raises(KafkaSetupError, match="llm.usage.v1"):
        ensure_topics(settings, {"llm.usage.v1": 2}, timeout=0.5)


def test_broker_stop_releases_port_and_process() -> None:
    broker = EmbeddedBroker().start()
    pid, port, workdir = broker.pid, broker.port, broker.log_path.parent
    assert pid is not None and broker.running and workdir.is_dir()

    broker.stop()

    assert not broker.running
    assert _process_gone(pid)
    assert _port_is_free(port)
    assert not workdir.exists()


def test_broker_stop_kills_when_clients_hold_it_open() -> None:
    # Tansu's SIGTERM waits for connected clients; stop() must not wait with it.
    with EmbeddedBroker() as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 0})
        producer.produce("held-open", value=b"x")
        assert producer.flush(10) == 0
        pid = broker.pid
        assert pid is not None
        started = time.monotonic()
        broker.stop(timeout=0.5)
        assert time.monotonic() - started < 5
        assert _process_gone(pid)
    # The broker is gone, so flush only drops the client's (empty) queue.
    producer.flush(0)


def _disconnect_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any("Disconnected" in record.getMessage() for record in caplog.records)


def test_broker_disconnects_are_debug_logs_not_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="costflux.librdkafka")
    with EmbeddedBroker() as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        producer = Producer(producer_config(settings))
        producer.produce("churn", value=b"x")
        assert producer.flush(10) == 0
        broker.stop(timeout=0.5)
        deadline = time.monotonic() + 5
        while not _disconnect_logged(caplog) and time.monotonic() < deadline:
            producer.poll(0.2)
    producer.flush(0)

    assert _disconnect_logged(caplog)
    assert {record.levelno for record in caplog.records} == {logging.DEBUG}
    assert "Disconnected" not in capfd.readouterr().err


def test_broker_on_a_taken_port_fails_with_log_tail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(port, startup_timeout=10)
        with pytest.raises(EmbeddedServerError, match="log tail"):
            broker.start()
    assert not broker.running


def test_redis_stop_releases_port_and_process() -> None:
    server = EmbeddedRedis().start()
    pid, port = server.pid, server.port
    assert pid is not None and server.running

    server.stop()

    assert not server.running
    assert _process_gone(pid)
    assert _port_is_free(port)


def test_redis_with_password_requires_it() -> None:
    password = 'pa"ss\\word'
    with EmbeddedRedis(password=password) as server:
        anonymous = redis.Redis.from_url(server.url)
        authenticated = redis.Redis.from_url(server.url, password=password)
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                anonymous.ping()
            assert authenticated.ping()
        finally:
            anonymous.close()
            authenticated.close()


def test_embedded_stack_starts_nothing_when_both_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"embedded_stack started a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    settings = Settings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9/0")
    with embedded_stack(settings) as effective:
        assert effective == settings


def test_embedded_stack_starts_only_what_is_missing_and_stops_on_interrupt(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    real_popen = subprocess.Popen

    def recording_popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(argv[0])
        return real_popen(argv, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    with pytest.raises(KeyboardInterrupt), embedded_stack(
        Settings(kafka_bootstrap=kafka_bootstrap)
    ) as effective:
        assert effective.kafka_bootstrap == kafka_bootstrap
        assert effective.redis_url is not None
        url = effective.redis_url
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
        raise KeyboardInterrupt

    assert len(started) == 1 and "redis-server" in started[0]
    after = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    with pytest.raises(redis.exceptions.ConnectionError):
        after.ping()
    after.close()


def test_embedded_stack_refuses_secured_protocol_without_bootstrap() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password=SecretStr("p"),
    )
    with pytest.raises(ConfigError, match="COSTFLUX_KAFKA_BOOTSTRAP"), embedded_stack(settings):
        pass

"""Throughput and memory of costflux against its baselines, on one embedded broker.

    python bench/run.py [--events N] [--partitions P] [--batch K]

Starts one embedded Tansu broker and one embedded Redis, pre-produces N usage events into a
single-event topic and a batched topic (and keyed copies for Quix), then has each path
consume them from the start with a fresh consumer group: raw confluent-kafka (the ceiling),
a bare Faust agent, Quix Streams, and the costflux worker. Prints a markdown table and
writes bench/results/latest.json. See bench/README.md for what is timed and why.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import workload
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from procs import ConsumerProcess, cpu_seconds

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.settings import Settings
from streams.kafka import admin_config, consumer_config, producer_config
from streams.producer import UsageProducer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
SYSTEMS = ("raw", "faust", "quix", "costflux")
KINDS = ("single", "batched")
#: Quix reads retention.ms from the topic's config and Tansu reports none unless it is set.
TOPIC_CONFIG = {"retention.ms": str(7 * 86400 * 1000)}
METRICS_POLL_S = 0.2
READY_POLL_S = 0.05


@dataclass(frozen=True)
class Bench:
    """Where this run's broker, Redis and topics are."""

    run_id: str
    events: int
    partitions: int
    batch: int
    settings: Settings
    broker_pid: int | None
    redis_pid: int | None
    logs: Path
    scratch: Path
    stage_timeout_s: float
    costflux_log_level: str
    profile: bool

    def topic(self, kind: str, quix: bool = False) -> str:
        return f"bench.{self.run_id}.{'quix-' if quix else ''}{kind}"


# --- producing ---------------------------------------------------------------------------


def create_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    admin = AdminClient(admin_config(settings))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, config=TOPIC_CONFIG) for name in names],
        operation_timeout=10, request_timeout=10,
    )
    for future in futures.values():
        future.result(timeout=15)


def produce_all(bench: Bench) -> dict[str, Any]:
    """Produce the same N events into the four topics; return message counts and timings."""
    config = producer_config(bench.settings)
    started = time.monotonic()
    keyed = Producer(dict(config))
    quix_batches: dict[bytes, list[bytes]] = defaultdict(list)
    quix_messages = {"single": 0, "batched": 0}

    def send_keyed(topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                keyed.produce(topic, value, key)
                break
            except BufferError:
                keyed.poll(0.1)
        keyed.poll(0)

    def send_quix_batch(key: bytes) -> None:
        send_keyed(bench.topic("batched", quix=True), key, b"[" + b",".join(quix_batches[key]) + b"]")
        quix_batches[key].clear()
        quix_messages["batched"] += 1

    single = UsageProducer(config, bench.topic("single"), events_per_message=1)
    batched = UsageProducer(config, bench.topic("batched"), events_per_message=bench.batch)
    with single, batched:
        for event in workload.generate(bench.events):
            single.send(event)
            batched.send(event)
            key = workload.dims_key(event)
            encoded = orjson.dumps(event)
            send_keyed(bench.topic("single", quix=True), key, encoded)
            quix_messages["single"] += 1
            # Quix windows group by key, so a Quix batch holds one key's events, in time order.
            quix_batches[key].append(encoded)
            if len(quix_batches[key]) >= bench.batch:
                send_quix_batch(key)
        for key in list(quix_batches):
            if quix_batches[key]:
                send_quix_batch(key)
    undelivered = keyed.flush(60)
    if undelivered:
        raise RuntimeError(f"{undelivered} Quix messages undelivered")
    expected = {
        bench.topic("single"): single.messages_sent,
        bench.topic("batched"): batched.messages_sent,
        bench.topic("single", quix=True): quix_messages["single"],
        bench.topic("batched", quix=True): quix_messages["batched"],
    }
    stored = {topic: messages_in(bench.settings, topic, bench.partitions) for topic in expected}
    if stored != expected:
        raise RuntimeError(f"topics hold {stored} messages, expected {expected}")
    return {"messages": stored, "produce_s": round(time.monotonic() - started, 2)}


def messages_in(settings: Settings, topic: str, partitions: int) -> int:
    consumer = Consumer(consumer_config(settings, "bench-watermarks"))
    try:
        total = 0
        for partition in range(partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            total += high - low
        return total
    finally:
        consumer.close()

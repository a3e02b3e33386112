"""Bad input, duplicates, lateness and crashes: nothing lost, nothing counted twice."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from costflux.settings import Settings
from costflux.streams.kafka import consumer_config, ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.integration.expected import totals_by
from tests.integration.stored import wait_applied
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def usage(index: int, *, ts_ms: int | None = None, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"ev-{index}",
        "ts": (ts_ms if ts_ms is not None else BASE_MS + index * 250) / 1000,
        "model": ("llama-2-70b", "llama-2-7b", "gpt-4")[index % 3],
        "input_tokens": 100 + index % 17,
        "output_tokens": 10 + index % 7,
        "labels": {"team": ("search", "ads")[index % 2], "namespace": "ml"},
    }
    event.update(fields)
    return event


def iso(event: dict[str, Any]) -> dict[str, Any]:
    """The recomputation reads ts as RFC 3339."""
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(event["ts"], tz=UTC)
    return {**event, "ts": moment.isoformat().replace("+00:00", "Z")}


def window_of(events: list[dict[str, Any]]) -> str:
    return "2023-11-14T00:00:00Z,2023-11-16T00:00:00Z"


def served_totals(worker: WorkerProcess, expected_requests: int) -> dict[str, dict[str, Any]]:
    def complete() -> bool:
        rows = worker.allocation(window_of([]), "model")
        return sum(int(r["requests"]) for r in rows.values()) >= expected_requests

    worker.wait_for(complete, 120, f"serving {expected_requests} requests")
    return worker.allocation(window_of([]), "model")


def assert_exact(served: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> None:
    expected = totals_by(events, "model")
    assert {k: Decimal(v["totalCostExact"]) for k, v in served.items()} == {
        k: v["cost"] for k, v in expected.items()
    }
    assert {k: v["requests"] for k, v in served.items()} == {
        k: v["requests"] for k, v in expected.items()
    }


def read_deadletters(settings: Settings, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    consumer = Consumer(consumer_config(settings, f"{settings.consumer_group}-dlq-reader"))
    consumer.subscribe([settings.topic_deadletter])
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                if message.error() is None:
                    records.append(json.loads(message.value()))
    finally:
        consumer.close()
    return records


BAD_INPUTS: list[tuple[str, bytes]] = [
    ("bad_json", b'{"event_id": "x", "ts": '),
    ("not_finite", json.dumps(usage(9001, latency_ms=float("nan"))).encode()),
    ("not_an_object", b"42"),
    ("unknown_field", orjson.dumps({**usage(9002), "input_token": 5})),
    ("missing_field", orjson.dumps({k: v for k, v in usage(9003).items() if k != "model"})),
    ("wrong_type", orjson.dumps(usage(9004, input_tokens="100"))),
    ("negative_value", orjson.dumps(usage(9005, output_tokens=-3))),
    ("absurd_value", orjson.dumps(usage(9006, input_tokens=10**12))),
    ("bad_timestamp", orjson.dumps(usage(9007) | {"ts": "yesterday"})),
    ("future_timestamp", orjson.dumps(usage(9008, ts_ms=int(time.time() * 1000) + 86_400_000))),
    ("unknown_model", orjson.dumps(usage(9009, model="gpt-99"))),
    ("oversized_labels", orjson.dumps(usage(9010, labels={"team": "x" * 1000}))),
    ("invalid_value", orjson.dumps(usage(9011, cached_input_tokens=10_000))),
]


def test_bad_inputs_go_to_deadletter_with_reason_and_pipeline_keeps_counting(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = settings_for(topic_partitions=1)
    ensure_topics(settings, {settings.topic_usage: 1})
    worker = start_worker(settings)
    worker.wait_ready()
    good: list[dict[str, Any]] = []
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for index, (_, raw) in enumerate(BAD_INPUTS):
            producer.send_raw(raw)
            event = usage(index)  # a valid event after each bad one: still processing?
            producer.send(event)
            good.append(event)
        # A batch with one bad element costs only that element.
        batch = [usage(100), usage(101, input_tokens=-1), usage(102)]
        producer.send_raw(orjson.dumps(batch))
        good += [batch[0], batch[2]]
        # Duplicates: a retried single event, a repeat inside a batch, and across messages.
        producer.send(usage(0))
        producer.send_raw(orjson.dumps([usage(103), usage(103), usage(1)]))
        good.append(usage(103))
        producer.flush()
        messages = producer.messages_sent

    assert_exact(served_totals(worker, len(good)), [iso(e) for e in good])
    records = read_deadletters(settings, len(BAD_INPUTS) + 1)
    reasons = sorted(r["reason"] for r in records)
    assert reasons == sorted([reason for reason, _ in BAD_INPUTS] + ["negative_value"])
    by_reason = {r["reason"]: r for r in records if r["batch_index"] is None}
    for reason, raw in BAD_INPUTS:
        assert base64.b64decode(by_reason[reason]["original_b64"]) == raw, reason
        assert by_reason[reason]["source_topic"] == settings.topic_usage
    batch_record = next(r for r in records if r["batch_index"] is not None)
    assert batch_record["batch_index"] == 1
    for reason, _ in BAD_INPUTS:
        times = 2 if reason == "negative_value" else 1  # once alone, once inside the batch
        assert worker.metric("costflux_deadletter_total", reason=reason) == times, reason
    assert worker.metric("costflux_duplicates_total") == 3
    wait_applied(worker, messages)  # the totals are final: nothing more can arrive
    assert_exact(worker.allocation(window_of([]), "model"), [iso(e) for e in good])


def test_late_events_within_lateness_count_and_later_ones_are_deadlettered(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = settings_for(topic_partitions=1, allowed_lateness_s=120)
    ensure_topics(settings, {settings.topic_usage: 1})
    newest = BASE_MS + 3_600_000
    on_time = [usage(1, ts_ms=newest), usage(2, ts_ms=newest - 60_000)]  # within 120 s
    too_late = usage(3, ts_ms=newest - 600_000)
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for event in (on_time[0], on_time[1], too_late):
            producer.send(event)
    worker = start_worker(settings)
    worker.wait_ready()
    assert_exact(served_totals(worker, 2), [iso(e) for e in on_time])
    (record,) = read_deadletters(settings, 1)
    assert record["reason"] == "late"
    assert json.loads(base64.b64decode(record["original_b64"]))["event_id"] == "ev-3"


@pytest.mark.parametrize("seed", [1])
def test_sigkill_and_restart_count_every_event_exactly_once(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    seed: int,
) -> None:
    rng = random.Random(seed)
    settings = settings_for(topic_partitions=4, ingest_flush_s=0.05)
    ensure_topics(settings, {settings.topic_usage: 4})
    events = [usage(i) for i in range(30_000)]
    worker = start_worker(settings)
    worker.wait_ready()
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=20) as producer:
        for index, event in enumerate(events):
            producer.send(event)
            if index == 10_000:
                producer.flush()
                # Kill while it is busy, at a random point of a flush (test_exactly_once.py
                # places kills at each point exactly).
                worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") > 0,
                                60, "ingesting")
                time.sleep(rng.uniform(0.0, 0.6))
                worker.kill()
        producer.flush()
        messages = producer.messages_sent
    restarted = start_worker(settings)
    restarted.wait_ready()
    assert_exact(served_totals(restarted, len(events)), [iso(e) for e in events])
    wait_applied(restarted, messages)
    assert_exact(restarted.allocation(window_of([]), "model"), [iso(e) for e in events])

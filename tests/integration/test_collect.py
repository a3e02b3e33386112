"""``costflux collect`` between real clients and a real worker: an application traced with the
OpenTelemetry SDK (OTLP/HTTP exporter) and one sending CloudEvents with the ``cloudevents``
SDK. Totals are compared with a Decimal recomputation of what the clients sent."""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from costflux.embedded import EmbeddedBroker, free_port
from costflux.settings import Settings
from costflux.streams.kafka import consumer_config, ensure_topics
from tests.integration.expected import totals_by
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

USAGE_TYPE = "io.costflux.usage.v1"
#: A served model the seed's price book does not know: its requested model is priced instead.
DATED = {"gpt-4": "gpt-4-0613", "llama-2-70b": "llama-2-70b"}


@pytest.fixture
def pipeline(settings_for: Callable[..., Settings],
             start_worker: Callable[..., WorkerProcess]) -> tuple[WorkerProcess, WorkerProcess]:
    """A worker and a collector on one broker and Redis, both ready."""
    settings = settings_for()
    worker = start_worker(settings)
    collector = start_worker(settings.model_copy(update={"http_port": free_port()}),
                             command="collect")
    worker.wait_ready()
    collector.wait_ready()
    return worker, collector


def requests_of(seed: int, count: int, source: str) -> list[dict[str, Any]]:
    """The usage the clients report, as the contract's events (the recomputation's input)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    events = []
    for index in range(count):
        input_tokens = rng.randint(1, 4000)
        events.append({
            "event_id": f"{source}-{index}", "ts": now.isoformat(),
            "model": rng.choice(sorted(DATED)), "input_tokens": input_tokens,
            "output_tokens": rng.randint(0, 800),
            "cached_input_tokens": rng.choice((0, 0, rng.randint(0, input_tokens))),
            "labels": {"team": rng.choice(("search", "ads", "chat"))},
        })
    return events


def traced_application(endpoint: str, usage: list[dict[str, Any]]) -> list[ReadableSpan]:
    """An application instrumented with the OpenTelemetry SDK: one span per model call (with
    an agent span around some of them and a database span beside), exported over OTLP/HTTP.
    Returns the finished spans."""
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "chat-api", "k8s.namespace.name": "ml-prod"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint),
                                                   max_export_batch_size=100))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test-app")
    for index, event in enumerate(usage):
        with tracer.start_as_current_span("invoke_agent planner", attributes={
            "gen_ai.operation.name": "invoke_agent",
            # An agent's total repeats its model calls' usage: never counted.
            "gen_ai.usage.input_tokens": event["input_tokens"],
            "gen_ai.usage.output_tokens": event["output_tokens"],
        }):
            with tracer.start_as_current_span(f"chat {event['model']}", attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": event["model"],
                "gen_ai.response.model": DATED[event["model"]],
                "gen_ai.usage.input_tokens": event["input_tokens"],
                "gen_ai.usage.output_tokens": event["output_tokens"],
                "gen_ai.usage.cache_read.input_tokens": event["cached_input_tokens"],
                "team": event["labels"]["team"],
            }) as span:
                if index % 7 == 0:
                    span.set_status(Status(StatusCode.ERROR))
            with tracer.start_as_current_span("db.query"):
                pass
    assert provider.force_flush(30_000)
    provider.shutdown()
    return list(memory.get_finished_spans())


def cloudevent(event: dict[str, Any]) -> CloudEvent:
    data = {k: v for k, v in event.items() if k not in ("event_id", "ts", "labels")}
    return CloudEvent(attributes={
        "specversion": "1.0", "id": event["event_id"], "source": "/billing/batch-jobs",
        "type": USAGE_TYPE, "time": datetime.fromisoformat(event["ts"]),
        "subject": event["labels"]["team"], "datacontenttype": "application/json",
    }, data=data)


def send_cloudevents(base: str, usage: list[dict[str, Any]]) -> None:
    """The three HTTP modes: structured, binary, and batched."""
    json_format = JSONFormat()
    thirds = len(usage) // 3
    for event in usage[:thirds]:
        message = ce_http.to_structured_event(cloudevent(event))
        answered = requests.post(f"{base}/v1/events", data=message.body,
                                 headers=message.headers, timeout=30)
        assert answered.status_code == 200, answered.text
    for event in usage[thirds:2 * thirds]:
        message = ce_http.to_binary_event(cloudevent(event))
        answered = requests.post(f"{base}/v1/events", data=message.body,
                                 headers=message.headers, timeout=30)
        assert answered.status_code == 200, answered.text
    batch = b"[" + b",".join(json_format.write(cloudevent(e)) for e in usage[2 * thirds:]) + b"]"
    answered = requests.post(f"{base}/v1/events", data=batch, timeout=30, headers={
        "Content-Type": "application/cloudevents-batch+json"})
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"accepted": len(usage) - 2 * thirds}


def window_around_now() -> str:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return (f"{(now - timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')},"
            f"{(now + timedelta(hours=2)).strftime('%Y-%m-%dT%H:%M:%SZ')}")


def wait_counted(worker: WorkerProcess, requests_total: int) -> dict[str, dict[str, Any]]:
    window = window_around_now()
    worker.wait_for(lambda: sum(r["requests"] for r in worker.allocation(
        window, "model").values()) >= requests_total, 120, f"counting {requests_total} requests")
    return worker.allocation(window, "model,label:team")


def served(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[Decimal, int, int, int, int]]:
    return {name: (Decimal(row["totalCostExact"]), row["inputTokens"], row["outputTokens"],
                   row["cachedInputTokens"], row["requests"]) for name, row in rows.items()}


def expected(usage: list[dict[str, Any]]) -> dict[str, tuple[Decimal, int, int, int, int]]:
    cached = {}
    for event in usage:
        name = f"{event['model']}/{event['labels']['team']}"
        cached[name] = cached.get(name, 0) + event["cached_input_tokens"]
    return {name: (sums["cost"], sums["input"], sums["output"], cached[name], sums["requests"])
            for name, sums in totals_by(usage, "model,label:team").items()}


def test_otel_and_cloudevents_clients_are_counted_exactly_and_resends_once(
    pipeline: tuple[WorkerProcess, WorkerProcess],
) -> None:
    worker, collector = pipeline
    spans_usage = requests_of(1, 150, "span")
    events_usage = requests_of(2, 90, "ce")

    spans = traced_application(f"{collector.base}/v1/traces", spans_usage)
    send_cloudevents(collector.base, events_usage)
    # Resent: every span exported again by a fresh exporter, every CloudEvent posted again.
    assert OTLPSpanExporter(endpoint=f"{collector.base}/v1/traces").export(
        spans) == SpanExportResult.SUCCESS
    send_cloudevents(collector.base, events_usage)

    rows = wait_counted(worker, len(spans_usage) + len(events_usage))
    assert served(rows) == expected(spans_usage + events_usage)
    # The collector's own account: each model call once per export, agent and db spans
    # ignored, nothing rejected.
    assert collector.metric("costflux_collect_converted_total", protocol="otlp") == 300
    assert collector.metric("costflux_collect_ignored_total", protocol="otlp",
                            reason="not_inference") == 300
    assert collector.metric("costflux_collect_ignored_total", protocol="otlp",
                            reason="no_usage") == 300
    assert collector.metric("costflux_collect_converted_total", protocol="cloudevents") == 180
    assert collector.metric("costflux_collect_rejected_total") == 0
    by_app = worker.allocation(window_around_now(), "label:app")
    assert by_app["chat-api"]["requests"] == len(spans_usage)
    assert by_app["__unallocated__"]["requests"] == len(events_usage)


class RetryingClient:
    """Posts each body until the collector acknowledges it, as an exporter with retries does:
    through refused or cut connections (the collector is down) and 503s."""

    def __init__(self, base: Callable[[], str]) -> None:
        self._base = base
        self.acknowledged = 0

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                answered = requests.post(self._base() + path, data=body, headers=headers,
                                         timeout=10)
                if answered.status_code == 200:
                    self.acknowledged += 1
                    return
                assert answered.status_code in (502, 503, 504), answered.text
            except requests.ConnectionError:
                pass
            time.sleep(0.05)  # the client's retry backoff
        raise AssertionError(f"{path} never acknowledged")


def otlp_bodies(usage: list[dict[str, Any]], per_request: int) -> list[bytes]:
    """The OTLP/HTTP protobuf bodies the SDK's exporter would send for these requests."""
    provider = TracerProvider(resource=Resource.create({"service.name": "batch-api"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test-app")
    for event in usage:
        with tracer.start_as_current_span("chat", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": event["model"],
            "gen_ai.usage.input_tokens": event["input_tokens"],
            "gen_ai.usage.output_tokens": event["output_tokens"],
            "gen_ai.usage.cache_read.input_tokens": event["cached_input_tokens"],
            "team": event["labels"]["team"]}):
            pass
    spans = list(memory.get_finished_spans())
    return [encode_spans(spans[start:start + per_request]).SerializeToString()
            for start in range(0, len(spans), per_request)]


def test_a_collector_sigkilled_mid_request_loses_nothing_and_counts_nothing_twice(
    settings_for: Callable[..., Settings], start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = settings_for()
    worker = start_worker(settings)
    collector_settings = settings.model_copy(update={"http_port": free_port()})
    current = {"collector": start_worker(collector_settings, command="collect")}
    worker.wait_ready()
    current["collector"].wait_ready()
    client = RetryingClient(lambda: current["collector"].base)

    spans_usage = requests_of(3, 1200, "span")
    events_usage = requests_of(4, 1200, "ce")
    json_format = JSONFormat()
    posts = [("/v1/traces", body, {"Content-Type": "application/x-protobuf"})
             for body in otlp_bodies(spans_usage, per_request=20)]
    posts += [("/v1/events", b"[" + b",".join(json_format.write(cloudevent(e))
                                              for e in events_usage[i:i + 20]) + b"]",
               {"Content-Type": "application/cloudevents-batch+json"})
              for i in range(0, len(events_usage), 20)]
    random.Random(5).shuffle(posts)

    def send(share: list[tuple[str, bytes, dict[str, str]]]) -> None:
        for path, body, headers in share:
            client.post(path, body, headers)

    # Four clients post at once, so the kill lands while requests are in flight: some were
    # handed to Kafka and never acknowledged, and are posted again to the new collector.
    with ThreadPoolExecutor(4) as clients:
        sending = [clients.submit(send, posts[i::4]) for i in range(4)]
        current["collector"].wait_for(lambda: client.acknowledged >= len(posts) // 3, 60,
                                      "acknowledging a third of the requests")
        current["collector"].kill()
        current["collector"] = start_worker(collector_settings, command="collect")
        for future in sending:
            future.result()

    rows = wait_counted(worker, len(spans_usage) + len(events_usage))
    assert served(rows) == expected(spans_usage + events_usage)


def read_topic(settings: Settings, topic: str, count: int) -> list[bytes]:
    """The first ``count`` messages of ``topic`` (waiting up to a minute for them)."""
    consumer = Consumer(consumer_config(settings, f"{settings.consumer_group}-reader-{topic}"))
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(values) < count and time.monotonic() < deadline:
            values += [m.value() for m in consumer.consume(100, timeout=0.5)
                       if m.error() is None]
    finally:
        consumer.close()
    return values


def test_bad_input_gets_a_clear_4xx_is_counted_and_dead_lettered(
    settings_for: Callable[..., Settings], start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = settings_for()
    collector = start_worker(settings, {"COSTFLUX_COLLECT_MAX_BODY_BYTES": "65536"},
                             command="collect")
    collector.wait_ready()
    traces, events = f"{collector.base}/v1/traces", f"{collector.base}/v1/events"
    protobuf = {"Content-Type": "application/x-protobuf"}

    answered = requests.post(traces, data=b"\x0a\xff\xff\xff\xff\x0f", headers=protobuf)
    assert answered.status_code == 400
    assert "protobuf" in answered.json()["message"]
    answered = requests.post(traces, data=b"{}", headers={"Content-Type": "text/plain"})
    assert answered.status_code == 415
    assert "application/x-protobuf" in answered.json()["message"]
    answered = requests.post(traces, data=b"\0" * 70_000, headers=protobuf)
    assert answered.status_code == 413
    assert "65536" in answered.json()["message"]
    bomb = gzip.compress(b"\0" * 1_000_000)
    answered = requests.post(traces, data=bomb, headers={**protobuf, "Content-Encoding": "gzip"})
    assert answered.status_code == 413

    # One export with a good span, one without a model and one with negative tokens: the
    # good one is taken, the others refused as OTLP says (partial success, with why).
    bad_spans = json.dumps({"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [
        {"spans": [otlp_json_span(i, attributes) for i, attributes in enumerate([
            {"gen_ai.request.model": "gpt-4", "gen_ai.usage.input_tokens": 5},
            {"gen_ai.usage.input_tokens": 5},
            {"gen_ai.request.model": "gpt-4", "gen_ai.usage.input_tokens": -5},
        ])]}]}]}).encode()
    answered = requests.post(traces, data=bad_spans, headers={"Content-Type": "application/json"})
    assert answered.status_code == 200
    partial = answered.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "span 1: missing_field" in partial["errorMessage"]
    assert "span 2: negative_value" in partial["errorMessage"]

    good = cloudevent(requests_of(6, 1, "ok")[0])
    unknown_type = CloudEvent(attributes={**good.get_attributes(), "id": "x",
                                          "type": "com.example.order"}, data=good.get_data())
    batch = b"[" + b",".join(JSONFormat().write(e) for e in (good, unknown_type)) + b"]"
    answered = requests.post(events, data=batch, headers={
        "Content-Type": "application/cloudevents-batch+json"})
    assert answered.status_code == 400
    assert answered.json()["accepted"] == 1
    [problem] = answered.json()["rejected"]
    assert (problem["index"], problem["id"], problem["reason"]) == (1, "x", "invalid_value")
    answered = requests.post(events, data=b"[", headers={
        "Content-Type": "application/cloudevents-batch+json"})
    assert answered.status_code == 400

    # Still serving, and every refusal counted by reason.
    message = ce_http.to_structured_event(good)
    assert requests.post(events, data=message.body, headers=message.headers).status_code == 200
    rejected = {reason: collector.metric("costflux_collect_rejected_total", reason=reason)
                for reason in ("malformed_body", "unsupported_media_type", "body_too_large",
                               "missing_field", "negative_value", "invalid_value")}
    assert rejected == {"malformed_body": 2, "unsupported_media_type": 1, "body_too_large": 2,
                        "missing_field": 1, "negative_value": 1, "invalid_value": 1}
    assert collector.metric("costflux_collect_requests_total", endpoint="/v1/traces",
                            code="413") == 2

    # Dead letters: the two malformed bodies and the three refused items, with reasons.
    records = [json.loads(v) for v in read_topic(settings, settings.topic_deadletter, 5)]
    assert sorted(r["reason"] for r in records) == [
        "invalid_value", "invalid_value", "invalid_value", "missing_field", "negative_value"]
    assert {r["source_topic"] for r in records} == {"http:/v1/traces", "http:/v1/events"}
    # The good span and the good CloudEvent (twice: one event id) reached the usage topic.
    usage = [e for v in read_topic(settings, settings.topic_usage, 3) for e in json.loads(v)]
    assert sorted(e["event_id"] for e in usage) == sorted(
        ["ce:/billing/batch-jobs:ok-0"] * 2 + [f"otel:{'ab' * 16}:{0:016x}"])


def otlp_json_span(index: int, attributes: dict[str, Any]) -> dict[str, Any]:
    values = [{"key": k, "value": {"stringValue": v} if isinstance(v, str)
               else {"intValue": str(v)}} for k, v in attributes.items()]
    return {"traceId": "ab" * 16, "spanId": f"{index:016x}", "name": "chat",
            "endTimeUnixNano": str(time.time_ns()), "attributes": values}


def test_kafka_away_means_503_and_unready_and_the_collector_recovers_on_its_own(
    settings_for: Callable[..., Settings], start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    broker = EmbeddedBroker(port).__enter__()
    try:
        settings = settings_for(kafka_bootstrap=broker.bootstrap)
        collector = start_worker(settings, {"COSTFLUX_COLLECT_DELIVERY_TIMEOUT_S": "2"},
                                 command="collect")
        collector.wait_ready()
        usage = requests_of(7, 3, "away")
        message = ce_http.to_structured_event(cloudevent(usage[0]))
        events = f"{collector.base}/v1/events"
        assert requests.post(events, data=message.body, headers=message.headers).ok
    finally:
        broker.__exit__(None, None, None)

    message = ce_http.to_structured_event(cloudevent(usage[1]))
    answered = requests.post(events, data=message.body, headers=message.headers, timeout=30)
    assert answered.status_code == 503
    assert answered.headers["Retry-After"] == "1"
    assert "retry" in answered.json()["message"]
    assert collector.get("/readyz")[0] == 503
    assert collector.get("/healthz")[0] == 200
    assert collector.metric("costflux_collect_delivery_failures_total") == 1

    # A broker back at the same address (Tansu starts empty: the topics are made again):
    # ready again with no request needed, and taking events.
    with EmbeddedBroker(port):
        ensure_topics(settings, {settings.topic_usage: 1, settings.topic_deadletter: 1})
        collector.wait_ready()
        # The producer finds the new broker's partitions and producer id first: a client
        # retrying on 503, as told, gets through.
        RetryingClient(lambda: collector.base).post(
            "/v1/events", message.body, dict(message.headers))
        [event] = json.loads(read_topic(settings, settings.topic_usage, 1)[0])
        assert event["event_id"] == "ce:/billing/batch-jobs:away-1"

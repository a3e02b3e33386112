"""How many GenAI spans one `costflux collect` process takes, and what it adds to an export.

    python bench/collect.py [--requests 400] [--spans 100] [--clients 4]

Starts one embedded broker and one collector process. In the same run:

1. raw: the same events, as the collector would write them (JSON arrays of 100), produced
   by a bare confluent-kafka producer (idempotent, acks=all) as fast as it goes: the ceiling;
2. raw, one batch at a time: produce 100 events and wait for Kafka's acknowledgement, the
   least latency any receiver that acknowledges after Kafka can have (p50/p99);
3. collector latency: one client exports ``--spans`` spans per request (OTLP protobuf, as
   the SDK's exporter encodes them), one request at a time: p50/p99 of the export call;
4. collector throughput: ``--clients`` clients export at once: spans/s, and the collector's
   CPU seconds per 100,000 spans.

Writes bench/results/collect.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests
from confluent_kafka import Producer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from procs import ConsumerProcess, cpu_seconds

from costflux.core.collect import judge_spans
from costflux.core.genai_spans import SpanMapping
from costflux.embedded import EmbeddedBroker, free_port
from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.otlp import read_protobuf

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
PARTITIONS = 8


def export_bodies(requests_count: int, spans: int) -> list[bytes]:
    """OTLP protobuf bodies of ``spans`` chat spans each, made by the OpenTelemetry SDK."""
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "chat-api", "k8s.namespace.name": "ml-prod", "team": "search"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for index in range(requests_count * spans):
        with tracer.start_as_current_span("chat gpt-4", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4", "gen_ai.response.model": "gpt-4-0613",
            "gen_ai.usage.input_tokens": 100 + index % 900,
            "gen_ai.usage.output_tokens": 10 + index % 90}):
            pass
    finished = list(memory.get_finished_spans())
    return [encode_spans(finished[i:i + spans]).SerializeToString()
            for i in range(0, len(finished), spans)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def raw_produce(settings: Settings, topic: str, messages: list[bytes]) -> dict[str, float]:
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    producer = Producer({**producer_config(settings), "on_delivery": delivered})
    producer.produce(topic, messages[0])  # connected and warm before timing
    assert producer.flush(30) == 0
    rounds = 5
    events = rounds * sum(len(orjson.loads(m)) for m in messages)
    started = time.perf_counter()
    for message in messages * rounds:
        while True:
            try:
                producer.produce(topic, message)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0
    elapsed = time.perf_counter() - started
    latencies = []
    for message in messages[:200]:
        started = time.perf_counter()
        producer.produce(topic, message)
        assert producer.flush(10) == 0
        latencies.append(time.perf_counter() - started)
    assert not failures, failures[:3]
    return {"events_per_s": events / elapsed, "batch_ack_p50_ms": percentile(latencies, 0.5)
            * 1000, "batch_ack_p99_ms": percentile(latencies, 0.99) * 1000}


def run(requests_count: int, spans: int, clients: int) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    bodies = export_bodies(requests_count, spans)
    # What the collector writes for each body: its events as JSON-array messages.
    messages = [b"[" + b",".join(judge_spans(read_protobuf(body), SpanMapping(),
                                             lambda _s: b"").events) + b"]"
                for body in bodies]
    with EmbeddedBroker() as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_partitions=PARTITIONS)
        ensure_topics(settings, {settings.topic_usage: PARTITIONS, "bench.raw": PARTITIONS,
                                 settings.topic_deadletter: PARTITIONS})
        report: dict[str, Any] = {"requests": requests_count, "spans_per_request": spans,
                                  "clients": clients}
        report["raw"] = raw_produce(settings, "bench.raw", messages)

        port = free_port()
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("COSTFLUX_")}
        env.update({"COSTFLUX_KAFKA_BOOTSTRAP": broker.bootstrap,
                    "COSTFLUX_HTTP_PORT": str(port), "COSTFLUX_LOG_LEVEL": "warning"})
        collector = ConsumerProcess("costflux-collect", [sys.executable, "-m", "costflux",
                                                         "collect"],
                                    env, RESULTS / "collect.log", REPO)
        url = f"http://127.0.0.1:{port}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("collector not ready:\n" + collector.log_tail())
                time.sleep(0.2)

            session = requests.Session()
            latencies = []
            for body in bodies[:200]:
                started = time.perf_counter()
                answered = session.post(url, data=body, headers=headers, timeout=30)
                latencies.append(time.perf_counter() - started)
                assert answered.status_code == 200, answered.text
            report["export_p50_ms"] = percentile(latencies, 0.5) * 1000
            report["export_p99_ms"] = percentile(latencies, 0.99) * 1000
            report["export_mean_ms"] = statistics.fmean(latencies) * 1000

            def post_all(share: list[bytes]) -> None:
                client = requests.Session()
                for body in share:
                    answered = client.post(url, data=body, headers=headers, timeout=30)
                    assert answered.status_code == 200, answered.text

            cpu_before = cpu_seconds(collector.pid) or 0.0
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                for future in [pool.submit(post_all, bodies[i::clients])
                               for i in range(clients)]:
                    future.result()
            elapsed = time.perf_counter() - started
            cpu = (cpu_seconds(collector.pid) or 0.0) - cpu_before
            total_spans = len(bodies) * spans
            report["spans_per_s"] = total_spans / elapsed
            report["collector_cpu_s_per_100k_spans"] = cpu / total_spans * 100_000
        finally:
            collector.stop()
    report["ratio_to_raw"] = report["spans_per_s"] / report["raw"]["events_per_s"]
    report["added_p50_ms"] = report["export_p50_ms"] - report["raw"]["batch_ack_p50_ms"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--spans", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    report = run(args.requests, args.spans, args.clients)
    (RESULTS / "collect.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    raw = report["raw"]
    print(f"{args.requests} exports x {args.spans} spans, {args.clients} clients:")
    print(f"  raw produce          {raw['events_per_s']:>10,.0f} events/s; one batch of "
          f"{args.spans} acknowledged in p50 {raw['batch_ack_p50_ms']:.1f} ms, "
          f"p99 {raw['batch_ack_p99_ms']:.1f} ms")
    print(f"  collector            {report['spans_per_s']:>10,.0f} spans/s "
          f"({report['ratio_to_raw']:.2f} of raw), "
          f"{report['collector_cpu_s_per_100k_spans']:.2f} CPU s per 100k spans")
    print(f"  export call          p50 {report['export_p50_ms']:.1f} ms, p99 "
          f"{report['export_p99_ms']:.1f} ms (p50 {report['added_p50_ms']:+.1f} ms over the "
          f"raw batch acknowledgement)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

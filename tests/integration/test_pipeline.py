"""End to end on the embedded broker and Redis: replay, worker subprocess, HTTP answers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import pytest
import redis

from costflux.cli.replay import replay
from costflux.core.trace import Assignment, ColumnMapping
from costflux.settings import Settings
from costflux.streams.cost_store import StoreKeys
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from costflux.streams.trace import iter_usage_events
from tests.integration.expected import (
    azure_rows,
    totals_by,
    totals_by_window,
)
from tests.integration.worker_process import WorkerProcess
from tests.paths import AZURE_TRACE

pytestmark = pytest.mark.integration

TRACE_SPAN = "2023-11-16T18:00:00Z,2023-11-16T20:00:00Z"
AZURE_ASSIGNMENT = Assignment(
    models=("llama-2-70b", "llama-2-7b", "gpt-4"),
    labels={"team": ("search", "ads", "chat", "research"),
            "deployment": ("llama-2-70b-prod", "llama-2-7b-prod", "gpt-4-prod"),
            "cluster": ("us-east-1", "us-east-1", "us-east-1", "eu-west-1", "eu-west-1")},
)


def produce_trace(settings: Settings, limit: int | None, speed: float,
                  events_per_message: int = 100) -> None:
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    events = iter_usage_events(AZURE_TRACE, ColumnMapping(), AZURE_ASSIGNMENT,
                               id_prefix="azure", limit=limit)
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=events_per_message) as producer:
        replay(events, producer, speed=speed)


def produce_events(settings: Settings, events: Iterable[dict[str, Any]]) -> None:
    """``events`` onto the usage topic, one a message. Produced before a worker starts, so
    that every partition's first flush spans several offsets."""
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for event in events:
            producer.send(event)


def wait_for_requests(worker: WorkerProcess, expected: int, timeout_s: float = 120) -> None:
    def served() -> bool:
        rows = worker.allocation(TRACE_SPAN, "model")
        return sum(int(r["requests"]) for r in rows.values()) == expected

    worker.wait_for(served, timeout_s, f"serving {expected} requests")


def assert_matches(served: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    assert set(served) == set(expected)
    for name, want in expected.items():
        got = served[name]
        # Exact: the API's decimal string carries every pico-dollar.
        assert Decimal(got["totalCostExact"]) == want["cost"], name
        assert abs(Decimal(str(got["totalCost"])) - want["cost"]) < Decimal("1e-9"), name
        assert got["inputTokens"] == want["input"], name
        assert got["outputTokens"] == want["output"], name
        assert got["requests"] == want["requests"], name


def test_azure_trace_totals_equal_independent_recomputation(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    redis_url: str,
) -> None:
    settings = settings_for()
    produce_trace(settings, limit=None, speed=0)
    expected_events = azure_rows()
    worker = start_worker(settings)
    worker.wait_ready()
    wait_for_requests(worker, len(expected_events))

    assert_matches(worker.allocation(TRACE_SPAN, "model"), totals_by(expected_events, "model"))
    assert_matches(worker.allocation(TRACE_SPAN, "label:team"), totals_by(expected_events, "team"))

    # Every window of both sizes, as held in Redis, equals the recomputation.
    want = {size_s: totals_by_window(expected_events, size_s) for size_s in settings.window_sizes}
    client = redis.Redis.from_url(redis_url)

    def served() -> dict[int, dict[int, Decimal]]:
        got: dict[int, dict[int, Decimal]] = {}
        for size_s, windows in want.items():
            got[size_s] = {}
            for start in windows:
                rows = client.hgetall(StoreKeys(settings.consumer_group).usage(size_s, start))
                got[size_s][start] = sum(Decimal(int(v.split(b",")[0]))
                                         for v in rows.values()) / 10**12
        return got

    try:
        got = served()
        for size_s in settings.window_sizes:
            assert got[size_s] == want[size_s], f"{size_s}s windows differ"
    finally:
        client.close()
    assert worker.metric("llm_requests_total") == len(expected_events)


def test_full_speed_and_paced_replays_give_identical_totals(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    rows = 400  # ~70 s of trace time; at 100x that is under a second of pacing
    answers = []
    for speed in (0.0, 100.0):
        settings = settings_for()
        worker = start_worker(settings)
        worker.wait_ready()
        produce_trace(settings, limit=rows, speed=speed, events_per_message=10)
        wait_for_requests(worker, rows)
        answers.append((worker.allocation(TRACE_SPAN, "model,label:team"),
                        worker.allocation(TRACE_SPAN, "model")))
        worker.stop()
    assert answers[0] == answers[1]
    assert_matches(answers[0][1], totals_by(azure_rows(rows), "model"))


def test_two_workers_share_the_work_and_either_answers_for_all(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    from costflux.embedded import free_port

    settings = settings_for(topic_partitions=4)
    first = start_worker(settings)
    first.wait_ready()
    second = start_worker(settings.model_copy(update={"http_port": free_port()}))
    second.wait_ready()
    rows = 6000
    produce_trace(settings, limit=rows, speed=0, events_per_message=50)
    expected = totals_by(azure_rows(rows), "team")
    for worker in (first, second):
        wait_for_requests(worker, rows)
        assert_matches(worker.allocation(TRACE_SPAN, "label:team"), expected)
    # Both took part: each priced some of the events.
    assert first.metric("costflux_ingest_events_total") > 0
    assert second.metric("costflux_ingest_events_total") > 0

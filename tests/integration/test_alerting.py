"""Alerting end to end: usage events through a worker to alert events, the Redis view, metrics.

The expected alerts are written out from the rules' definitions for the planted data (see
each test), not computed with costflux's code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Consumer

from costflux.settings import Settings
from streams.kafka import consumer_config, ensure_topics, producer_config
from streams.producer import UsageProducer
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
FAST_DETECTION = {
    "allowed_lateness_s": 0,
    "partition_idle_s": 1.0,
    "eval_settle_s": 0.3,
    "eval_backfill_s": 40 * 86400,
    "topic_partitions": 2,
}


def gpt4(event_id: str, ts_ms: int, team: str, input_tokens: int = 1000) -> dict[str, Any]:
    """A gpt-4 request: $0.03 per 1K input tokens (the seed's price), no output."""
    return {"event_id": event_id, "ts": ts_ms / 1000, "model": "gpt-4",
            "input_tokens": input_tokens, "output_tokens": 0,
            "labels": {"team": team, "namespace": "prod"}}


def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for event in events:
            producer.send(event)


class AlertsReader:
    """Reads the alerts topic from the beginning, as a consumer outside the worker."""

    def __init__(self, settings: Settings) -> None:
        ensure_topics(settings, {settings.topic_alerts: settings.topic_partitions})
        self.consumer = Consumer(consumer_config(settings, settings.consumer_group + "-reader",
                                                 **{"auto.offset.reset": "earliest"}))
        self.consumer.subscribe([settings.topic_alerts])
        self.events: list[dict[str, Any]] = []

    def read_until(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float,
                   worker: WorkerProcess) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while not done(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"alerts so far: {self.events}\n{worker.log_tail()}")
            for message in self.consumer.consume(100, timeout=0.5):
                if message.error() is None:
                    self.events.append(orjson.loads(message.value()))
        return self.events

    def close(self) -> None:
        self.consumer.close()


def test_a_planted_spike_alerts_once_firing_once_resolved_and_never_in_cold_start(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = settings_for(**FAST_DETECTION)  # the seeds' eight default rules
    now = int(time.time() * 1000)
    start = now - now % HOUR_MS - 36 * HOUR_MS
    # 30 hours of three $0.03 requests an hour; hour 20 has nine (3x the mean: a spike).
    events = [gpt4(f"r{h}-{m}", start + h * HOUR_MS + m * 6 * MINUTE_MS + 1000, "search")
              for h in range(30) for m in range(9 if h == 20 else 3)]
    events.append(gpt4("clock", start + 31 * HOUR_MS, "other", input_tokens=1))
    reader = AlertsReader(settings)
    worker = start_worker(settings)
    try:
        produce(settings, events)
        worker.wait_ready()
        reader.read_until(lambda got: len(got) >= 2, 120, worker)
        worker.wait_for(lambda: _evaluated_to(worker) >= start + 31 * HOUR_MS, 60,
                        "evaluating to the last event")
        time.sleep(1.0)
        alerts = reader.read_until(lambda got: True, 5, worker)
    finally:
        reader.close()
    # The hour from 20:00 closes at 21:00: $0.27 against a mean of $0.09 -> 3 > 2, firing;
    # at 22:00 the last hour is $0.09 against a mean of ~$0.098 -> under 1.5, resolved.
    labels = {"namespace": "prod", "team": "search", "model": "gpt-4"}
    assert [(a["rule"], a["state"], a["labels"], _ms(a["starts_at"]) - start)
            for a in alerts] == [("CostSpike", "firing", labels, 21 * HOUR_MS),
                                 ("CostSpike", "resolved", labels, 21 * HOUR_MS)]
    firing, resolved = alerts
    assert firing["alert_id"] == resolved["alert_id"]
    assert firing["value"] == 3.0
    assert _ms(resolved["ends_at"]) - start == 22 * HOUR_MS
    assert worker.metric("costflux_alerts_total", rule="CostSpike", state="firing") == 1
    assert worker.get("/api/alerts")[1]["data"] == []


BUDGETS = """
budgets:
  - name: ml-research-monthly
    scope: {team: ml-research}
    period: monthly
    amount: 50000
    thresholds: [50, 80, 100]
"""


def test_the_seeds_budget_example_through_the_stream(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path, redis_url: str,
) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    # A 30-day month that has ended: last month if it had 30 days, else the one before.
    month = _thirty_day_month_before(datetime.now(UTC))
    settings = settings_for(**FAST_DETECTION, budgets_file=budgets)
    day15 = month + 15 * 86_400_000
    # $25,000 over days 1-15, a day's spend in its last minute (never ahead of the pace of
    # $50,000 a month): gpt-4 at $0.03 per 1K tokens, $1,666 = 55,533,333 tokens + 10 more.
    spend = [gpt4(f"d{d}", month + (d + 1) * 86_400_000 - MINUTE_MS, "ml-research",
                  input_tokens=(1_676 if d == 14 else 1_666) * 100_000_000 // 3)
             for d in range(15)]
    # ($1,666 and $1,676 are not multiples of $0.03 per 1K: the tokens round down, so the
    # spend is a little under; two top-up requests make day 15's total exactly $25,000.)
    spent = sum(e["input_tokens"] for e in spend) * 3
    assert 25_000 * 100_000_000 - spent < 3 * 100_000
    spend.append(gpt4("top-up", day15 - 30_000, "ml-research",
                      input_tokens=(25_000 * 100_000_000 - spent) // 3))
    warning = [gpt4("w", day15 + 1000, "ml-research", input_tokens=2_000 * 100_000_000 // 3 + 1)]
    critical = [gpt4("c", day15 + MINUTE_MS + 1000, "ml-research",
                     input_tokens=1_000 * 100_000_000 // 3)]
    clock = [gpt4(f"clock{k}", day15 + k * MINUTE_MS, "other", input_tokens=1)
             for k in (1, 2, 3)]
    # ...
    del warning, critical, clock, redis_url
    pytest.skip("in progress")


def _thirty_day_month_before(now: datetime) -> int:
    year, month = now.year, now.month
    while True:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        start = datetime(year, month, 1, tzinfo=UTC)
        following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        if (following - start).days == 30:
            return int(start.timestamp() * 1000)


def _evaluated_to(worker: WorkerProcess) -> int:
    evaluated = worker.get("/api/alerts")[1]["evaluatedAt"]
    return 0 if evaluated is None else _ms(evaluated)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
